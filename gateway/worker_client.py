"""The gateway's side of one worker connection (asyncio + a ZeroMQ DEALER).

A ``WorkerClient`` connects, handshakes, and then multiplexes every request
for that worker over one socket: outputs are routed to per-request queues,
control replies to futures. It watches the link (socket monitor for
disconnects, pings answered by the worker's compute loop) and, when the
worker goes away, ends every in-flight request with an error at once so no
client hangs.

It also keeps this gateway's view of the worker's queue (requests sent
that have produced no token yet, and their prompt tokens still to
prefill), which the pool compares with the queue limits before sending
more work; the worker's own reported load covers other gateways' requests.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from protocol import codec
from protocol.messages import (
    PROTOCOL_VERSION,
    Abort,
    ChatRequest,
    ControlCall,
    ControlReply,
    ErrorInfo,
    GoingAway,
    Hello,
    ModelInfo,
    ModelsChanged,
    RequestOutput,
    StepOutputs,
    Usage,
    WorkerInfo,
    WorkerLoad,
)

from .config import GatewayConfig
from .output_stream import OutputStream

log = logging.getLogger("kmlx.gateway.worker")


class WorkerUnavailable(Exception):
    """The worker cannot take this call right now (down, or link broken)."""


@dataclass
class WorkerState:
    ready: bool = False
    reason: str = "connecting"
    info: WorkerInfo | None = None
    load: WorkerLoad = field(default_factory=WorkerLoad)  # as last reported (all gateways)
    last_seen: float = 0.0
    inflight: int = 0  # this gateway's requests on the worker


@dataclass(frozen=True)
class QueueLimits:
    """How much not-yet-running work this gateway lets queue on one worker
    before it answers 503 itself (the worker enforces its own limit too)."""

    max_requests: int = GatewayConfig.max_queued_requests  # 0: the worker's own --max-queued, from its WorkerInfo
    max_tokens: int = GatewayConfig.max_queued_tokens  # prompt tokens waiting to be prefilled; 0: no limit


class WorkerClient:
    def __init__(
        self,
        address: str,
        *,
        gateway_id: str,
        limits: QueueLimits | None = None,
        ping_interval: float = GatewayConfig.ping_interval,
        ping_timeout: float = GatewayConfig.ping_timeout,
    ):
        self.address = address
        self.gateway_id = gateway_id
        self.limits = limits or QueueLimits()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.state = WorkerState()
        # request id -> prompt tokens still to prefill, for this gateway's
        # requests that have produced no token yet (0 until the worker says).
        self._waiting: dict[str, int] = {}
        self._ctx = zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._streams: dict[str, OutputStream] = {}
        self._calls: dict[str, asyncio.Future[ControlReply]] = {}
        self._tasks: list[asyncio.Task] = []
        self._call_ids = itertools.count()
        self._confirming: asyncio.Task | None = None

    # ------------------------------------------------------------------ #
    @property
    def ready(self) -> bool:
        return self.state.ready

    @property
    def worker_id(self) -> str:
        return self.state.info.worker_id if self.state.info else self.address

    def models(self) -> list[ModelInfo]:
        """Every model this worker serves, loaded or not (as it last said). A
        worker that lists none serves its one model (``model_id``), loaded."""
        info = self.state.info
        if info is None:
            return []
        if not info.models and info.model_id:
            return [ModelInfo(id=info.model_id, context_length=info.context_length, capabilities=info.capabilities)]
        return list(info.models)

    def model(self, model_id: str) -> ModelInfo | None:
        return next((m for m in self.models() if m.id == model_id), None)

    def queued(self) -> tuple[int, int]:
        """``(requests, prompt tokens)`` waiting on this worker, as far as
        this gateway knows: its own unstarted requests, or the worker's
        reported waiting count when that is larger (other gateways)."""
        return max(len(self._waiting), self.state.load.waiting), sum(self._waiting.values())

    def load(self) -> int:
        """Running + waiting sequences: the worker's last report, or this
        gateway's own in-flight count when that is fresher and larger."""
        return max(self.state.load.running + self.state.load.waiting, self.state.inflight)

    def queue_full(self) -> str | None:
        """Why this worker's queue is full from this gateway's view, or None."""
        requests, tokens = self.queued()
        max_requests = self.limits.max_requests or (self.state.info.max_queued if self.state.info else 0)
        if max_requests and requests >= max_requests:
            return f"{requests} requests are queued (limit {max_requests})"
        if self.limits.max_tokens and requests and tokens >= self.limits.max_tokens:
            return f"{tokens} prompt tokens are queued (limit {self.limits.max_tokens})"
        return None

    async def start(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # Only queue messages on a live connection: a request must never be
        # parked for a worker that may come back minutes later.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        sock.setsockopt(zmq.RECONNECT_IVL, 200)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.address)
        self._sock, self._monitor = sock, monitor
        self._tasks = [
            asyncio.create_task(self._receive_loop(), name=f"recv {self.address}"),
            asyncio.create_task(self._monitor_loop(monitor), name=f"monitor {self.address}"),
            asyncio.create_task(self._liveness_loop(), name=f"liveness {self.address}"),
        ]

    async def close(self) -> None:
        tasks = self._tasks + ([self._confirming] if self._confirming else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._mark_down("gateway shutting down")
        if self._sock is not None:
            self._sock.disable_monitor()
            self._sock.close(linger=0)
        if self._monitor is not None:
            self._monitor.close(linger=0)  # disable_monitor() leaves the PAIR socket open
        self._sock = self._monitor = None  # closing twice is harmless

    # ------------------------------------------------------------------ #
    async def submit(self, request: ChatRequest) -> OutputStream:
        """Send a request; its outputs arrive on the returned stream, ending
        with one whose ``finish_reason`` is set (errors included)."""
        if not self.state.ready:
            raise WorkerUnavailable(self.state.reason)
        q = OutputStream()
        self._streams[request.request_id] = q
        self._waiting[request.request_id] = 0
        try:
            await self._send(request)
        except WorkerUnavailable:
            self._streams.pop(request.request_id, None)
            self._waiting.pop(request.request_id, None)
            raise
        self.state.inflight += 1
        return q

    def release(self, request_id: str) -> None:
        """Forget a finished request (its stream saw the final output)."""
        self._waiting.pop(request_id, None)
        if self._streams.pop(request_id, None) is not None:
            self.state.inflight -= 1

    def abort_nowait(self, request_id: str) -> None:
        """Ask the worker to stop a request, without waiting (callable from a
        cancelled response task); safe to call for finished ones."""
        self.release(request_id)
        if self._sock is None or not self.state.ready:
            return
        # Sent without waiting; if the link is gone the worker aborts orphans itself.
        fut = asyncio.ensure_future(self._sock.send(codec.encode(Abort(request_ids=[request_id])), zmq.NOBLOCK))
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def call(self, method: str, args: dict[str, Any] | None = None, *, timeout: float = 10.0) -> ControlReply:
        call_id = f"{self.gateway_id}-{next(self._call_ids)}"
        fut: asyncio.Future[ControlReply] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = fut
        try:
            await self._send(ControlCall(call_id=call_id, method=method, args=args or {}))  # type: ignore[arg-type]
            # Not asyncio.wait_for: before Python 3.12 it swallows a cancellation
            # that comes in the same loop turn as the reply, and the liveness
            # loop, cancelled by close(), then pinged on and close() never returned.
            done, _ = await asyncio.wait((fut,), timeout=timeout)
            if not done:
                raise WorkerUnavailable(f"worker did not answer {method} within {timeout:.0f}s")
            return fut.result()
        finally:
            self._calls.pop(call_id, None)

    # ------------------------------------------------------------------ #
    async def _send(self, msg: Any) -> None:
        if self._sock is None:
            raise WorkerUnavailable(self.state.reason)  # closed (or never started)
        try:
            await self._sock.send(codec.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            self._mark_down("no connection to the worker")
            raise WorkerUnavailable("no connection to the worker") from None

    async def _receive_loop(self) -> None:
        assert self._sock is not None
        while True:
            frame = await self._sock.recv()
            try:
                msg = codec.decode_from_worker(frame)
            except codec.DecodeError as exc:
                log.warning("undecodable message from %s: %s", self.address, exc)
                continue
            if isinstance(msg, (StepOutputs, ControlReply)):
                self.state.last_seen = time.monotonic()  # the compute loop is alive
            if isinstance(msg, StepOutputs):
                if msg.load is not None:
                    self.state.load = msg.load
                for out in msg.outputs:
                    q = self._streams.get(out.request_id)
                    if q is not None:
                        q.put_nowait(out)
                        if out.request_id in self._waiting:
                            self._track_waiting(out)
            elif isinstance(msg, ControlReply):
                fut = self._calls.get(msg.call_id)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif isinstance(msg, WorkerInfo):
                self._on_info(msg)
            elif isinstance(msg, ModelsChanged) and self.state.info is not None:
                # a model loaded, unloaded or failed: routing and /v1/models follow at once
                self.state.info = msgspec.structs.replace(self.state.info, models=msg.models)
            elif isinstance(msg, GoingAway):
                log.warning("worker %s is going away: %s", msg.worker_id, msg.reason)
                self._mark_down(f"worker went away: {msg.reason}")

    def _track_waiting(self, out: RequestOutput) -> None:
        if out.tokens or out.content or out.reasoning or out.finish_reason:
            del self._waiting[out.request_id]  # running (or done): no longer queued
        elif out.cache_decision is not None:
            self._waiting[out.request_id] = out.cache_decision.processing_tokens or out.prompt_tokens

    def _on_info(self, info: WorkerInfo) -> None:
        if info.protocol_version != PROTOCOL_VERSION:
            self._mark_down(f"worker speaks protocol {info.protocol_version}, gateway {PROTOCOL_VERSION}")
            log.error("refusing worker %s at %s: %s", info.worker_id, self.address, self.state.reason)
            return
        self.state.info = info
        if not self.state.ready and (self._confirming is None or self._confirming.done()):
            self.state.reason = "handshake answered; waiting for its compute loop"
            self._confirming = asyncio.create_task(self._confirm_ready(info))

    async def _confirm_ready(self, info: WorkerInfo) -> None:
        """Ready only once the compute loop answers a ping: the handshake is
        answered by the worker's IO thread, which lives on even when the
        compute loop hangs, and must not bring a hung worker back."""
        try:
            await self.call("ping", timeout=self.ping_timeout)
        except WorkerUnavailable:
            return  # the liveness loop says hello again
        if not self.state.ready:
            log.info("worker %s ready at %s (model %s)", info.worker_id, self.address, info.model_id)
            self.state.ready = True
            self.state.reason = "ready"

    async def _monitor_loop(self, monitor: zmq.asyncio.Socket) -> None:
        while True:
            event = await recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_CONNECTED:
                await self._send_hello()
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                await self._let_receive_loop_catch_up()
                self._mark_down("connection to the worker lost")

    async def _let_receive_loop_catch_up(self, limit: float = 1.0) -> None:
        """What the worker sent before its link dropped (a drained stream's
        last tokens, its GoingAway) is still queued in the socket: the monitor
        socket can report the drop first. Let the receive loop deliver it, in
        order, before failing whatever is left in flight."""
        assert self._sock is not None
        deadline = time.monotonic() + limit
        while int(self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.005)  # the last frame's handling runs in the receive loop's next turn

    async def _send_hello(self) -> None:
        try:
            await self._send(Hello(protocol_version=PROTOCOL_VERSION, gateway_id=self.gateway_id))
        except WorkerUnavailable:
            pass

    async def _liveness_loop(self) -> None:
        """Ping through the compute loop. One long compute step (a big prefill
        chunk on a slow machine) delays the answer, so only a worker silent
        for a whole ``ping_timeout`` is declared hung."""
        while True:
            await asyncio.sleep(self.ping_interval)
            if not self.state.ready:
                await self._send_hello()
                continue
            try:
                reply = await self.call("ping", timeout=self.ping_timeout)
                # Workers report load with every step's outputs; the ping
                # refreshes it when this gateway has nothing running there.
                if reply.load is not None:
                    self.state.load = reply.load
            except WorkerUnavailable:
                if time.monotonic() - self.state.last_seen >= self.ping_timeout:
                    self._mark_down("worker stopped answering pings")

    def _mark_down(self, reason: str) -> None:
        was_ready = self.state.ready
        self.state.ready = False
        self.state.reason = reason
        if was_ready:
            log.warning("worker at %s is down: %s", self.address, reason)
        # End every in-flight request now: a client must never wait on a dead link.
        err = ErrorInfo(f"worker unavailable: {reason}", type="server_error", code="worker_unavailable", status=503)
        for rid, q in list(self._streams.items()):
            q.put_nowait(RequestOutput(request_id=rid, finish_reason="error", error=err, usage=Usage()))
        self._streams.clear()
        self._waiting.clear()
        self.state.inflight = 0
        self.state.load = WorkerLoad()  # a returning worker starts empty
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(WorkerUnavailable(reason))


def new_gateway_id() -> str:
    return f"gw-{uuid.uuid4().hex[:8]}"
