"""Errors the client reports to people, each with a message worth reading.

Nothing here prints; the CLI layer decides where (stderr, the REPL) and
which exit code.
"""

from __future__ import annotations

from typing import Any

from client.config import START_HINT


class ClientError(Exception):
    """Base: `str(err)` is the friendly, complete message."""

    exit_code = 1


class GatewayUnreachable(ClientError):
    """No TCP connection (refused, DNS, timeout) to the gateway."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"Cannot reach the kmlx gateway at {url} ({reason}).\n{START_HINT}")


class ApiError(ClientError):
    """The gateway answered with an error (HTTP 4xx/5xx or an error event)."""

    def __init__(
        self,
        status: int | None,
        message: str,
        type_: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f"HTTP {self.status}" if self.status else "stream"
        kind = self.type or self.code
        label = f"{where} {kind}" if kind else where
        param = f" (param: {self.param})" if self.param else ""
        return f"Gateway error [{label}]: {self.message}{param}"

    @classmethod
    def from_payload(cls, status: int | None, payload: Any, fallback: str = "") -> ApiError:
        """Build from an OpenAI-shaped body ``{"error": {...}}``; tolerate other
        shapes (FastAPI's ``{"detail": ...}``, plain text) so nothing is lost."""
        if isinstance(payload, dict):
            err = payload.get("error")
            if isinstance(err, dict):
                return cls(
                    status,
                    str(err.get("message") or fallback or "unknown error"),
                    _opt_str(err.get("type")),
                    _opt_str(err.get("code")),
                    _opt_str(err.get("param")),
                )
            if isinstance(err, str):
                return cls(status, err)
            if "detail" in payload:
                return cls(status, str(payload["detail"]))
        text = fallback.strip() or f"unexpected response {payload!r}"[:500]
        return cls(status, text)


class AttachmentError(ClientError):
    """An `image:` token that cannot be sent (missing file, not an image...)."""


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
