"""The record of each request's outcome: one structured log line, the
metrics, and (opt-in) the trace file — all from the same call, so the three
always agree.

A chat route takes a ``RequestRecord`` (``request_log.record(request)``),
calls ``submitted`` when a worker has the request and ``finished`` exactly
once when it ends. Requests that never reach a worker (401, 413, validation
errors, 503 refusals) and other endpoints are logged by the request-id
middleware (``access.py``) through ``edge``: it sees in the request's state
whether the route already wrote the line.

The log line never holds prompt or answer text; only the trace does.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from fastapi import Request

from protocol.messages import ChatRequest, RequestOutput, Usage

from .metrics import Metrics
from .trace import TraceWriter

log = logging.getLogger("kmlx.gateway.requests")

# The routes that generate: their refusals before any worker count as rejections.
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/completions"})


class RequestLog:
    def __init__(self, metrics: Metrics, trace: TraceWriter | None = None):
        self.metrics = metrics
        self.trace = trace

    def record(self, request: Request) -> RequestRecord:
        return RequestRecord(self, request)

    @property
    def tracing(self) -> bool:
        return self.trace is not None

    def submitted(self, wire: ChatRequest, *, worker_id: str, model: str) -> None:
        if self.trace is not None:
            self.trace.write("request", {
                "request_id": wire.request_id,
                "conversation_id": wire.conversation_id,
                "worker": worker_id,
                "model": model,
                "messages": msgspec.to_builtins(wire.messages),
                "sampling": {f: getattr(wire.sampling, f) for f in wire.sampling.__struct_fields__},
                "tools": wire.tools,
            })

    def finished(
        self,
        *,
        request_id: str,
        conversation_id: str | None,
        worker_id: str,
        model: str,
        out: RequestOutput,
        arrived: float,
        status: int,
        refused: bool = False,
        content: str | None = None,
        reasoning: str | None = None,
    ) -> None:
        """Account a request that reached a worker. ``refused``: the worker
        turned it down at admission (its first output was the error)."""
        u = out.usage or Usage()
        total = time.perf_counter() - arrived
        error_code = out.error.code if out.error else None
        fields: dict[str, Any] = {
            "event": "request",
            "request_id": request_id,
            "conversation_id": conversation_id,
            "worker": worker_id,
            "model": model,
            "status": status,
            "finish_reason": out.finish_reason,
            "error_code": error_code,
            "prompt_tokens": u.prompt_tokens,
            "cached_tokens": u.cached_tokens,
            "completion_tokens": u.completion_tokens,
            "ttft_s": round(u.ttft_seconds, 4),
            "queue_s": round(u.queue_seconds, 4),
            "decode_s": round(u.decode_seconds, 4),
            "total_s": round(total, 4),
            "tokens_per_second": round((u.completion_tokens - 1) / u.decode_seconds, 2)
            if u.decode_seconds > 0 and u.completion_tokens > 1 else 0.0,
        }
        level = logging.INFO if status < 500 else logging.WARNING
        log.log(level, "request %s %s %s", request_id, status, out.finish_reason, extra={"fields": fields})
        self.metrics.observe(
            model=model, finish_reason=out.finish_reason, usage=u, total_seconds=total,
            error_code=error_code, refused=refused,
        )
        if self.trace is not None:
            self.trace.write("response", {**fields, "content": content, "reasoning": reasoning})

    def edge(self, *, request_id: str, method: str, path: str, status: int, error_code: str | None, total: float) -> None:
        """A request no route logged: answered by a middleware, refused
        before reaching a worker, or not a chat request at all."""
        fields = {
            "event": "http",
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "error_code": error_code,
            "total_s": round(total, 4),
        }
        if path in GENERATION_PATHS and status in (429, 503):
            self.metrics.reject(error_code or "unavailable")
        # Probes and scrapes every few seconds would drown the log at INFO.
        level = logging.DEBUG if status < 400 else logging.INFO
        log.log(level, "%s %s %s", method, path, status, extra={"fields": fields})


class RequestRecord:
    """One request's handle on the log: ``finished`` also marks the request
    as logged, so the middleware does not write a second line for it."""

    def __init__(self, request_log: RequestLog, request: Request):
        self.log = request_log
        self.state = request.state

    @property
    def tracing(self) -> bool:
        return self.log.tracing

    def submitted(self, wire: ChatRequest, *, worker_id: str, model: str) -> None:
        self.log.submitted(wire, worker_id=worker_id, model=model)

    def finished(self, **kwargs: Any) -> None:
        self.state.outcome_logged = True
        self.log.finished(**kwargs)
