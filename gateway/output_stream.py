"""One request's outputs on their way from the worker socket to the client.

The per-token path of the gateway: the receive loop appends, the relay
takes. An ``asyncio.Queue`` read through ``asyncio.wait_for`` (needed for
keep-alives and deadlines) creates a Task per token; this waits on one
plain future with a timer instead, which is several times cheaper.
"""

from __future__ import annotations

import asyncio
from collections import deque

from protocol.messages import RequestOutput


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class OutputStream:
    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[RequestOutput] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, out: RequestOutput) -> None:
        self._items.append(out)
        if self._waiter is not None:
            _wake(self._waiter)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> RequestOutput:
        return self._items.popleft()  # IndexError when empty, like a deque

    async def get(self, timeout: float | None = None) -> RequestOutput | None:
        """The next output; ``None`` if none arrived within ``timeout`` seconds."""
        if self._items:
            return self._items.popleft()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _wake, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return self._items.popleft() if self._items else None
