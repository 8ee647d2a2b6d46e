"""One HTTP exchange with an ASGI app, read as the app sends it.

httpx's ASGITransport hands back a response only once the app has finished
it, and tells the app of a disconnect only then: fine for whole answers,
blind to streaming and to a client that leaves. ``AsgiExchange`` calls the
app directly on the test's event loop, gives the body chunk by chunk, and
can disconnect the client at any moment. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message

WAIT = 15.0


class AsgiExchange:
    def __init__(self, app: ASGIApp, method: str, path: str, *, json_body: Any = None, headers: dict[str, str] | None = None):
        self.app = app
        body = b"" if json_body is None else json.dumps(json_body).encode()
        hdrs = {"content-type": "application/json", "content-length": str(len(body)), **(headers or {})}
        self.scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in hdrs.items()],
            "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {},
        }
        self._body = body
        self._body_sent = False
        self._gone = asyncio.Event()
        self._sent: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.ended = False
        self._buffer = b""

    async def __aenter__(self) -> AsgiExchange:
        async def serve() -> None:
            await self.app(self.scope, self._receive, self._send)

        self._task = asyncio.create_task(serve())
        return self

    async def __aexit__(self, exc_type: object, *_exc: object) -> None:
        self.disconnect()
        if self._task is None:
            return
        if exc_type is not None:  # the test failed or was cancelled: don't wait for the app
            self._task.cancel()
            return
        await asyncio.wait_for(self._task, WAIT)  # the app must finish once the client is gone

    # ------------------------------------------------------------------ #
    def disconnect(self) -> None:
        """The client goes away (closes the connection)."""
        self._gone.set()

    async def head(self, timeout: float = WAIT) -> int:
        """Wait for the response to start; its status (headers in ``headers``)."""
        if self.status is None:
            message = await self._next_message(timeout)
            assert message["type"] == "http.response.start", message
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        return self.status

    async def chunk(self, timeout: float = WAIT) -> bytes | None:
        """The next body chunk; ``None`` once the response is complete."""
        await self.head(timeout)
        if self.ended:
            return None
        message = await self._next_message(timeout)
        if message["type"] != "http.response.body":
            raise AssertionError(f"unexpected ASGI message {message}")
        if not message.get("more_body", False):
            self.ended = True
        return message.get("body", b"")

    async def body(self, timeout: float = WAIT) -> bytes:
        out = b""
        while (part := await self.chunk(timeout)) is not None:
            out += part
        return out

    async def json(self) -> Any:
        return json.loads(await self.body())

    async def event(self, timeout: float = WAIT) -> str | None:
        """The next SSE event (its text without the trailing blank line): a
        ``data: ...`` line or a ``: comment``; ``None`` at the end."""
        while b"\n\n" not in self._buffer:
            part = await self.chunk(timeout)
            if part is None:
                assert not self._buffer, self._buffer
                return None
            self._buffer += part
        text, self._buffer = self._buffer.split(b"\n\n", 1)
        return text.decode()

    async def next_data(self, timeout: float = WAIT) -> Any:
        """The JSON payload of the next event, which must be a ``data:`` event."""
        event = await self.event(timeout)
        assert event is not None and event.startswith("data: "), f"expected a data event, got {event!r}"
        return sse_data([event])[0]

    async def events(self, timeout: float = WAIT) -> list[str]:
        out = []
        while (e := await self.event(timeout)) is not None:
            out.append(e)
        return out

    # ------------------------------------------------------------------ #
    async def _next_message(self, timeout: float = WAIT) -> Message:
        getter = asyncio.ensure_future(self._sent.get())
        assert self._task is not None
        done, _ = await asyncio.wait({getter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if self._task in done:
            self._task.result()  # re-raise the app's error, if any
            raise AssertionError("the app finished without sending more")
        raise AssertionError(f"the app sent nothing within {timeout}s")

    async def _receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if self._gone.is_set():
            return  # as uvicorn does: what is sent to a closed connection is dropped
        await self._sent.put(message)


def sse_data(events: list[str]) -> list[Any]:
    """The JSON payloads of ``data:`` events (``[DONE]`` kept as the string)."""
    out: list[Any] = []
    for e in events:
        if e.startswith("data: "):
            payload = e[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out
