"""The gateway's FastAPI application, built by a factory (no import-time work)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .config import GatewayConfig
from .errors import install_error_handlers
from .operations import install_operations
from .pool import WorkerPool
from .response_store import ResponseStore
from .routes import chat, completions, conv_kv, messages, models, responses, tokenize

log = logging.getLogger("kmlx.gateway")


def create_app(config: GatewayConfig) -> FastAPI:
    pool = WorkerPool.from_config(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        log.info("gateway %s up; workers: %s", pool.gateway_id, ", ".join(w.address for w in pool.workers))
        yield
        await pool.close()

    app = FastAPI(title="kmlx gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.config = config
    app.state.pool = pool
    app.state.draining = False
    app.state.responses = ResponseStore(config.responses)  # /v1/responses with store (response_store.py)
    install_error_handlers(app)
    install_operations(app, config.ops, pool)  # metrics, request log, API key, CORS, body cap, request ids
    app.include_router(chat.router)
    app.include_router(messages.router)
    app.include_router(completions.router)
    app.include_router(responses.router)
    app.include_router(models.router)
    app.include_router(conv_kv.router)
    app.include_router(tokenize.router)
    return app
