"""HTTP access to the gateway (httpx): models, health, chat (stream or not).

All transport failures become `GatewayUnreachable` and all HTTP errors become
`ApiError`, so callers deal with two friendly exceptions, never httpx's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from client.errors import ApiError, GatewayUnreachable
from client.sse import StreamEvent, iter_events

# Connecting should be quick; reading may legitimately wait minutes (a long
# prefill on CPU), and Ctrl-C always works, so no read timeout by default.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=10.0)


@dataclass
class ConvHeaders:
    """The gateway's per-response conversation-cache report."""

    conv_id: str | None = None
    kv: str | None = None
    cached_tokens: int | None = None
    processing_tokens: int | None = None
    request_id: str | None = None

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> ConvHeaders:
        return cls(
            conv_id=headers.get("x-conv-id"),
            kv=headers.get("x-conv-kv"),
            cached_tokens=_int_or_none(headers.get("x-conv-cached-tokens")),
            processing_tokens=_int_or_none(headers.get("x-conv-processing-tokens")),
            request_id=headers.get("x-request-id"),
        )


class ChatStream:
    """An open streaming response: headers now, events as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.conv = ConvHeaders.from_headers(response.headers)

    def events(self) -> Iterator[StreamEvent]:
        try:
            yield from iter_events(self.response.iter_lines())
        except httpx.TransportError as exc:
            raise ApiError(None, f"the stream broke off: {_reason(exc)}") from exc


def root_url(base_url: str) -> str:
    """``http://h:p/v1`` -> ``http://h:p``: /health lives beside /v1, not in it."""
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


class Gateway:
    """A connection to one gateway. Use as a context manager, or `close()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"User-Agent": "kmlx-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- simple endpoints -------------------------------------------------- #

    def models(self) -> list[dict[str, Any]]:
        body = self._get_json(f"{self.base_url}/models")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ApiError(None, f"unexpected /models answer: {str(body)[:200]}")
        return [m for m in data if isinstance(m, dict)]

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body). 503 is an answer (not ready), not an error."""
        url = f"{root_url(self.base_url)}/health"
        resp = self._send("GET", url)
        try:
            body = resp.json()
        except ValueError:
            body = {"status": resp.text.strip()[:200]}
        return resp.status_code, body if isinstance(body, dict) else {"status": body}

    # -- chat --------------------------------------------------------------- #

    def chat(self, body: dict[str, Any]) -> tuple[dict[str, Any], ConvHeaders]:
        """Non-streaming completion: (response JSON, conversation headers)."""
        resp = self._send("POST", f"{self.base_url}/chat/completions", json={**body, "stream": False})
        _raise_for_status(resp)
        try:
            payload = resp.json()
        except ValueError as exc:
            raise ApiError(resp.status_code, f"the gateway sent non-JSON: {resp.text[:200]!r}") from exc
        if isinstance(payload, dict) and "error" in payload:
            raise ApiError.from_payload(resp.status_code, payload)
        return payload, ConvHeaders.from_headers(resp.headers)

    @contextmanager
    def stream_chat(self, body: dict[str, Any]) -> Iterator[ChatStream]:
        """Streaming completion. Leaving the block closes the connection, which
        is how the server learns to abort a generation we stopped reading."""
        url = f"{self.base_url}/chat/completions"
        request = self._http.build_request("POST", url, json={**body, "stream": True})
        try:
            resp = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        try:
            if resp.status_code >= 400:
                resp.read()
                _raise_for_status(resp)
            yield ChatStream(resp)
        finally:
            resp.close()

    # -- plumbing ----------------------------------------------------------- #

    def _get_json(self, url: str) -> Any:
        resp = self._send("GET", url)
        _raise_for_status(resp)
        try:
            return resp.json()
        except ValueError as exc:
            raise ApiError(resp.status_code, f"the gateway sent non-JSON: {resp.text[:200]!r}") from exc

    def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, **kw)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
            raise self._unreachable(exc) from exc
        except httpx.TransportError as exc:
            raise ApiError(None, f"request to {url} failed: {_reason(exc)}") from exc

    def _unreachable(self, exc: Exception) -> Exception:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol)):
            return GatewayUnreachable(self.base_url, _reason(exc))
        return ApiError(None, f"request to {self.base_url} failed: {_reason(exc)}")


def _raise_for_status(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        payload: Any = resp.json()
    except (ValueError, json.JSONDecodeError):
        payload = None
    raise ApiError.from_payload(resp.status_code, payload, fallback=resp.text or resp.reason_phrase)


def _reason(exc: Exception) -> str:
    """httpx messages are often empty or nested; find something readable."""
    text = str(exc).strip()
    if "Connection refused" in text or "[Errno 111]" in text:
        return "connection refused"
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return text or type(exc).__name__


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
