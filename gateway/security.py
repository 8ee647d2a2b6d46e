"""Who may call the gateway and how much they may send.

Pure ASGI middlewares (no request objects, no body buffering):

- ``ApiKeyMiddleware``: with ``--api-key`` set, every path except
  ``/health`` and ``/metrics`` needs ``Authorization: Bearer <key>`` (or
  ``x-api-key: <key>``, as Anthropic's clients send it). It is
  path-generic on purpose, so routes added later (``/v1/conv_kv/...``) are
  covered without touching this file. Unknown paths get 401 too, which
  tells an unauthenticated caller nothing about which routes exist.
- ``BodySizeLimitMiddleware``: a declared ``Content-Length`` over the cap is
  answered 413 before the body is read; a chunked body is counted as it
  arrives and the read fails with 413 once it crosses the cap.
- CORS: Starlette's middleware, only when ``--cors-origin`` is given.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError
from .ops_config import OpsConfig

OPEN_PATHS = frozenset({"/health", "/metrics"})  # probes and scrapers carry no key


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        err = APIError(
            401,
            "missing or invalid API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await err.response(path=scope["path"])(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip().encode()
        elif "x-api-key" in headers:
            given = headers["x-api-key"].strip().encode()
        else:
            return False
        # Constant-time comparison against every key (no early exit on a match).
        return sum(hmac.compare_digest(given, k) for k in self.keys) > 0


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large().response({"Connection": "close"}, path=scope["path"])(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()  # surfaces from the route's body read as a 413
            return message

        await self.app(scope, counted, send)

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(self.max_bytes)


class BodyTooLarge(APIError, StarletteHTTPException):  # type: ignore[misc]  # both declare headers; ours wins
    """An APIError that is also an HTTPException: FastAPI re-raises those
    from its own body parsing (other errors there become a 400), and our
    APIError handler, first in the MRO, renders it."""

    def __init__(self, max_bytes: int):
        APIError.__init__(self, 413, f"request body exceeds {max_bytes} bytes (--max-body-mb)", code="request_too_large")
        self.status_code = 413
        self.detail = self.message


def install_security(app: FastAPI, ops: OpsConfig) -> None:
    """Add the middlewares; call before the request-id middleware so that
    one wraps these (their 401/413 answers get an id and a log line too)."""
    # add_middleware puts each new one outside the previous: body cap is
    # innermost, then the key check, then CORS (so browser preflights are
    # answered without a key and 401s still carry CORS headers).
    if ops.max_body_bytes:
        app.add_middleware(BodySizeLimitMiddleware, max_bytes=ops.max_body_bytes)
    if ops.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=ops.api_keys)
    if ops.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=ops.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id", "X-Conversation-Id",
                           "x-api-key", "anthropic-version", "anthropic-beta"],
            expose_headers=["X-Request-Id", "X-Conv-Id", "X-Conv-KV", "X-Conv-Cached-Tokens", "X-Conv-Processing-Tokens", "X-Worker-Id"],
            max_age=600,
        )
