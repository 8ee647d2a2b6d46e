"""Wire the operations features into an app: metrics, the request log,
access control and request ids (docs/operations.md).

Middleware order, outermost first: request id (every answer gets an id and,
if no route logged it, a log line) -> CORS -> API key -> body size cap ->
the routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from .access import RequestIdMiddleware
from .metrics import Metrics
from .metrics import router as metrics_router
from .ops_config import OpsConfig
from .request_log import RequestLog
from .security import install_security
from .trace import TraceWriter

if TYPE_CHECKING:
    from .pool import WorkerPool


def install_operations(app: FastAPI, ops: OpsConfig, pool: WorkerPool) -> None:
    trace = TraceWriter(ops.trace_requests_path) if ops.trace_requests_path else None
    app.state.metrics = Metrics(pool)
    app.state.request_log = RequestLog(app.state.metrics, trace)
    install_security(app, ops)
    app.add_middleware(RequestIdMiddleware, request_log=app.state.request_log)
    app.include_router(metrics_router)
