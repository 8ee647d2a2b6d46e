"""The worker's IO thread: the only code that touches the ZeroMQ socket.

One ROUTER socket serves every gateway. Incoming frames are decoded and put
on ``inbox`` for the compute loop; outgoing messages are queued with
``send()`` from any thread, and a self-pipe wakes the IO thread to send them.
The handshake (Hello -> WorkerInfo) is answered here: it needs no compute.

``ROUTER_MANDATORY`` makes a send to a vanished gateway fail loudly instead
of being dropped; we turn that into a ``GatewayGone`` event so the compute
loop aborts that gateway's orphaned requests.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from collections import deque
from dataclasses import dataclass

import msgspec
import zmq

from protocol import codec
from protocol.messages import PROTOCOL_VERSION, GoingAway, Hello, WorkerInfo

from .watchdog import LoopStalled

log = logging.getLogger("kmlx.worker.transport")


@dataclass(frozen=True)
class GatewayGone:
    gateway: bytes


@dataclass(frozen=True)
class Incoming:
    gateway: bytes
    message: msgspec.Struct


@dataclass(frozen=True)
class Wake:
    """Wakes a compute loop blocked on an empty inbox; carries nothing
    (shutdown was asked for, or the media thread has a result)."""

    why: str


InboxItem = Incoming | GatewayGone | Wake | LoopStalled  # LoopStalled: from the watchdog thread


class Transport:
    """Binds at once (a taken port fails before the model is loaded; port 0
    picks a free one, see ``endpoint``); serves once ``start`` says what."""

    info: WorkerInfo  # the handshake reply, set by ``start``

    def __init__(self, bind: str, inbox: queue.Queue[InboxItem]):
        self.bind = bind
        self.inbox = inbox
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.LINGER, 1000)
        # Detect half-open TCP links (a gateway host that vanished).
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        # Never drop: unbounded here, bounded by admission control upstream.
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.bind(bind)
        self._out: deque[tuple[bytes | None, msgspec.Struct]] = deque()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._gateways: set[bytes] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kmlx-io", daemon=True)

    @property
    def endpoint(self) -> str:
        return self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def start(self, info: WorkerInfo) -> None:
        """Answer handshakes with ``info`` and start moving messages (frames
        that arrived since the bind are waiting in the socket)."""
        self.info = info
        self._thread.start()

    def send(self, gateway: bytes | None, msg: msgspec.Struct) -> None:
        """Queue a message; ``gateway=None`` broadcasts to every known gateway."""
        with self._lock:
            self._out.append((gateway, msg))
        os.write(self._wake_w, b"x")

    def close(self, reason: str) -> None:
        """Say goodbye to every gateway, flush, and stop the IO thread."""
        if self._thread.is_alive():
            self.send(None, GoingAway(worker_id=self.info.worker_id, reason=reason))
            self._stopping.set()
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=5)
        self._sock.close(linger=1000)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ------------------------------------------------------------------ #
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while True:
            events = dict(poller.poll(timeout=500))
            if self._sock in events:
                self._receive_all()
            if self._wake_r in events:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            self._send_all()
            if self._stopping.is_set():
                self._send_all()
                return

    def _receive_all(self) -> None:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                log.warning("dropping a malformed message (%d frames)", len(frames))
                continue
            gateway, payload = frames
            try:
                msg = codec.decode_to_worker(payload)
            except codec.DecodeError as exc:
                log.warning("dropping an undecodable message: %s", exc)
                continue
            self._gateways.add(gateway)
            if isinstance(msg, Hello):
                if msg.protocol_version != PROTOCOL_VERSION:
                    log.warning(
                        "gateway %s speaks protocol %d, this worker %d", msg.gateway_id, msg.protocol_version, PROTOCOL_VERSION
                    )
                self._out.appendleft((gateway, self.info))
                continue
            self.inbox.put(Incoming(gateway, msg))

    def _send_all(self) -> None:
        while True:
            with self._lock:
                if not self._out:
                    return
                gateway, msg = self._out.popleft()
            payload = codec.encode(msg)
            targets = [gateway] if gateway is not None else list(self._gateways)
            for target in targets:
                try:
                    self._sock.send_multipart([target, payload], zmq.NOBLOCK)
                except zmq.ZMQError as exc:
                    if exc.errno == errno.EHOSTUNREACH:
                        self._gateways.discard(target)
                        self.inbox.put(GatewayGone(target))
                    else:
                        log.warning("send failed: %s", exc)
