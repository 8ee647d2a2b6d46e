"""A fake worker on a real ZeroMQ socket, on the test's own event loop.

``bench.fake_worker.FakeWorker`` supplies what a worker says; this serves it
on a ROUTER socket bound to loopback (port chosen by the OS: no race), and
steps only when the test calls ``step()``, so a test sets the pace itself
instead of relying on how fast this machine is. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import msgspec
import zmq
import zmq.asyncio

from bench.fake_worker import FakeWorker, Reply
from protocol import codec
from protocol.messages import Abort, ChatRequest

T = TypeVar("T")
WAIT = 15.0  # seconds any single wait in these tests may take (generous: the machine may be busy)


async def wait_until(predicate: Callable[[], T], timeout: float = WAIT, what: str = "condition") -> T:
    """Poll ``predicate`` on the event loop until it is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


class FakeWorkerServer:
    """``FakeWorker`` behind a bound ROUTER socket. ``received`` lists every
    message from gateways in arrival order."""

    def __init__(self, name: str = "fake-0", *, address: str = "tcp://127.0.0.1:0", **info: Any):
        self.fake = FakeWorker(name, **info)
        self.received: list[msgspec.Struct] = []
        self.clients: set[bytes] = set()
        # True: chat requests wait unanswered (a worker whose compute loop has
        # not reached them yet) until ``admit_held()``.
        self.hold_admissions = False
        self.held: list[tuple[bytes, ChatRequest]] = []
        self._stepper: asyncio.Task[None] | None = None
        self._bind = address
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.address = ""

    async def start(self) -> FakeWorkerServer:
        sock = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self._bind)
        self._sock = sock
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._task = asyncio.create_task(self._receive_loop(), name=f"fake worker {self.fake.info.worker_id}")
        return self

    async def close(self) -> None:
        """The worker dies: no goodbye, the socket just goes away. Safe to
        call from a cancelled test: the socket closes before any await."""
        tasks = [t for t in (self._stepper, self._task) if t is not None]
        self._stepper = self._task = None
        for t in tasks:
            t.cancel()
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> FakeWorkerServer:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ #
    async def step(self, n: int = 1) -> None:
        """``n`` compute steps: one token for every running request each."""
        for _ in range(n):
            await self._send(self.fake.step())

    async def admit_held(self) -> None:
        held, self.held = self.held, []
        for client, req in held:
            await self._send(self.fake.handle(client, req))

    def keep_stepping(self) -> None:
        """Step in the background whenever a request runs, as fast as the
        event loop allows: for tests where the pace does not matter."""

        async def stepper() -> None:
            while True:
                if self.fake.seqs:
                    await self.step()
                await asyncio.sleep(0.001 if not self.fake.seqs else 0)

        if self._stepper is None:
            self._stepper = asyncio.create_task(stepper(), name="fake worker steps")

    async def stop_stepping(self) -> None:
        stepper, self._stepper = self._stepper, None
        if stepper is not None:
            stepper.cancel()
            await asyncio.gather(stepper, return_exceptions=True)

    async def run_to_end(self, max_steps: int = 10_000) -> None:
        for _ in range(max_steps):
            if not self.fake.seqs:
                return
            await self.step()
        raise AssertionError(f"requests still running after {max_steps} steps")

    async def broadcast(self, msg: msgspec.Struct) -> None:
        await self._send([(c, msg) for c in self.clients])

    async def send(self, client: bytes, msg: msgspec.Struct) -> None:
        await self._send([(client, msg)])

    def of_type(self, kind: type[T]) -> list[T]:
        return [m for m in self.received if isinstance(m, kind)]

    async def wait_for(self, kind: type[T], predicate: Callable[[T], bool] = lambda _m: True, timeout: float = WAIT) -> T:
        """The first received message of ``kind`` that satisfies ``predicate``."""
        found = await wait_until(lambda: next((m for m in self.of_type(kind) if predicate(m)), None), timeout, f"a {kind.__name__}")
        assert found is not None
        return found

    # ------------------------------------------------------------------ #
    async def _receive_loop(self) -> None:
        assert self._sock is not None
        while True:
            client, frame = await self._sock.recv_multipart()
            msg = codec.decode_to_worker(frame)
            self.clients.add(client)
            self.received.append(msg)
            if self.hold_admissions and isinstance(msg, ChatRequest):
                self.held.append((client, msg))
                continue
            if isinstance(msg, Abort):
                self.held = [(c, r) for c, r in self.held if r.request_id not in msg.request_ids]
            await self._send(self.fake.handle(client, msg))

    async def _send(self, replies: list[Reply]) -> None:
        if self._sock is None:
            return
        for client, msg in replies:
            try:
                await self._sock.send_multipart([client, codec.encode(msg)], zmq.NOBLOCK)
            except zmq.ZMQError:  # that gateway is gone
                self.fake.drop_gateway(client)
                self.clients.discard(client)
