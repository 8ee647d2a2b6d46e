"""Request identity at the HTTP edge: ``X-Request-Id`` on every response.

The outermost middleware. A client's ``X-Request-Id`` is kept when it is
sane (short printable ASCII); otherwise one is made up. It is stored in the
request's state (routes may refine it: chat completions use the OpenAI-style
``chatcmpl-…`` id when the client sent none) and echoed on the response.
The same id is the ``request_id`` sent to the worker, so the gateway's and
the worker's log lines for one request share it.

A request whose route did not log its own outcome (see ``request_log.py``)
gets its line here, with the status and the OpenAI error code of the answer.
"""

from __future__ import annotations

import json
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .request_log import RequestLog

MAX_ID_LENGTH = 128
_MAX_ERROR_BODY = 8192  # error bodies are small JSON; never buffer more


def valid_request_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_LENGTH and value.isascii() and value.isprintable()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, request_log: RequestLog):
        self.app = app
        self.request_log = request_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        state = scope.setdefault("state", {})
        state["request_id_given"] = valid_request_id(given)
        state["request_id"] = given if state["request_id_given"] else f"req-{uuid.uuid4().hex}"
        status = 500
        error_body = bytearray()
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers["X-Request-Id"] = state["request_id"]
            elif message["type"] == "http.response.body" and status >= 400 and len(error_body) < _MAX_ERROR_BODY:
                error_body.extend(message.get("body", b"")[:_MAX_ERROR_BODY])
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not state.get("outcome_logged"):
                self.request_log.edge(
                    request_id=state["request_id"],
                    method=scope.get("method", ""),
                    path=scope.get("path", ""),
                    status=status,
                    error_code=_error_code(bytes(error_body)) if status >= 400 else None,
                    total=time.perf_counter() - started,
                )


def _error_code(body: bytes) -> str | None:
    try:
        err = json.loads(body).get("error")
        return err.get("code") if isinstance(err, dict) else None
    except (ValueError, AttributeError):
        return None
