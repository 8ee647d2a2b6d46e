"""uvicorn, with a drain phase on SIGTERM.

Plain uvicorn stops accepting connections at once. A gateway behind a load
balancer or launchd should instead keep answering for a moment: `/health`
turns 503 and new chat requests get 503 + Retry-After, while running
streams finish (up to the drain timeout). Then it exits; streams still
running are cut and their requests aborted on the workers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("kmlx.gateway")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout: float):
        super().__init__(config)
        self.app = app
        self.drain_timeout = drain_timeout
        self._drain_task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._drain_task is None and self.drain_timeout > 0:
            self.app.state.draining = True
            self._drain_task = asyncio.get_event_loop().create_task(self._drain())
            return
        super().handle_exit(sig, frame)

    async def _drain(self) -> None:
        pool = self.app.state.pool
        deadline = time.monotonic() + self.drain_timeout
        inflight = sum(w.state.inflight for w in pool.workers)
        log.info("draining: %d request(s) in flight, up to %.0fs", inflight, self.drain_timeout)
        while inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            inflight = sum(w.state.inflight for w in pool.workers)
        if inflight:
            log.warning("drain timeout: cutting %d request(s)", inflight)
        self.should_exit = True
