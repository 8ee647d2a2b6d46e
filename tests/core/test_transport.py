"""worker.transport.Transport, the worker's IO thread, in-process: a real
ROUTER on loopback (port 0) and plain DEALER sockets as gateways. No model,
no compute loop: the test reads the inbox the loop would read. Every wait
has a deadline (socket polls and queue gets are bounded)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import msgspec
import pytest
import zmq

from protocol import codec
from protocol.chat import ChatMessage
from protocol.messages import (
    PROTOCOL_VERSION,
    Abort,
    ChatRequest,
    GoingAway,
    Hello,
    RequestOutput,
    SamplingParams,
    StepOutputs,
    WorkerInfo,
)
from worker.transport import GatewayGone, InboxItem, Incoming, Transport

WAIT = 10.0  # seconds any single wait may take

INFO = WorkerInfo(
    protocol_version=PROTOCOL_VERSION, worker_id="w-test", model_id="m", created=0, context_length=64, capabilities=["chat"]
)


class Gateway:
    """A DEALER with an identity, as gateway.worker_client connects."""

    def __init__(self, ctx: zmq.Context, endpoint: str, identity: bytes):
        self.identity = identity
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, msg: msgspec.Struct) -> None:
        self.sock.send(codec.encode(msg))

    def recv(self, timeout: float = WAIT) -> msgspec.Struct:
        assert self.sock.poll(int(timeout * 1000)), f"{self.identity!r} got nothing within {timeout}s"
        return codec.decode_from_worker(self.sock.recv())

    def silent(self, for_s: float = 0.2) -> bool:
        return not self.sock.poll(int(for_s * 1000))


@pytest.fixture
def inbox() -> queue.Queue[InboxItem]:
    return queue.Queue()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def transport(inbox: queue.Queue[InboxItem], ctx: zmq.Context) -> Iterator[Transport]:
    # Closed before the gateways' context (it depends on it): its goodbye then
    # finds them connected instead of lingering for a peer that is gone.
    t = Transport("tcp://127.0.0.1:0", inbox)
    yield t
    t.close("test over")


def next_item(inbox: queue.Queue[InboxItem]) -> InboxItem:
    try:
        return inbox.get(timeout=WAIT)
    except queue.Empty:
        raise AssertionError(f"nothing reached the inbox within {WAIT}s") from None


def chat(rid: str) -> ChatRequest:
    return ChatRequest(rid, [ChatMessage(role="user", content="hi")], SamplingParams(max_tokens=2))


def test_port_0_binds_a_real_port_before_start_and_frames_wait_for_it(transport, inbox, ctx):
    host, port = transport.endpoint.rsplit(":", 1)
    assert host == "tcp://127.0.0.1" and int(port) > 0
    gw = Gateway(ctx, transport.endpoint, b"gw-a")
    gw.send(Hello(protocol_version=PROTOCOL_VERSION, gateway_id="gw-a"))
    gw.send(chat("early"))
    assert gw.silent()  # bound, not yet serving (the worker is still loading)
    transport.start(INFO)
    assert gw.recv() == INFO
    item = next_item(inbox)
    assert isinstance(item, Incoming) and item.gateway == b"gw-a" and item.message == chat("early")


def test_the_handshake_is_answered_on_the_io_thread_and_never_reaches_the_inbox(transport, inbox, ctx):
    transport.start(INFO)
    gw = Gateway(ctx, transport.endpoint, b"gw-a")
    # Another protocol version still gets the WorkerInfo: the gateway refuses it with a clear message.
    gw.send(Hello(protocol_version=PROTOCOL_VERSION + 1, gateway_id="gw-a"))
    assert gw.recv() == INFO
    gw.send(Abort(request_ids=["x"]))
    item = next_item(inbox)
    assert isinstance(item, Incoming) and item.message == Abort(request_ids=["x"])
    assert inbox.empty()


def test_undecodable_and_malformed_frames_are_dropped_and_the_thread_goes_on(transport, inbox, ctx):
    transport.start(INFO)
    gw = Gateway(ctx, transport.endpoint, b"gw-a")
    gw.sock.send(b"\xc1 not msgpack")
    gw.sock.send(codec.encode(StepOutputs(outputs=[])))  # a worker-bound socket never takes worker replies
    gw.sock.send_multipart([b"two", b"frames"])
    gw.send(chat("after"))
    item = next_item(inbox)
    assert isinstance(item, Incoming) and item.message == chat("after")
    assert inbox.empty()


def test_send_reaches_its_gateway_and_none_broadcasts_to_every_known_one(transport, inbox, ctx):
    transport.start(INFO)
    a, b = Gateway(ctx, transport.endpoint, b"gw-a"), Gateway(ctx, transport.endpoint, b"gw-b")
    for gw in (a, b):
        gw.send(Hello(protocol_version=PROTOCOL_VERSION, gateway_id=gw.identity.decode()))
        assert gw.recv() == INFO
    out = StepOutputs(outputs=[RequestOutput("r1", content="hi", tokens=1)])
    transport.send(b"gw-b", out)
    assert b.recv() == out and a.silent()
    bye = GoingAway(worker_id="w-test", reason="test")
    transport.send(None, bye)
    assert a.recv() == bye and b.recv() == bye


def test_a_send_to_a_vanished_gateway_becomes_gateway_gone(transport, inbox, ctx):
    transport.start(INFO)
    transport.send(b"never-connected", StepOutputs(outputs=[RequestOutput("r1", tokens=1)]))
    item = next_item(inbox)
    assert item == GatewayGone(b"never-connected")  # the compute loop then aborts its requests
    gw = Gateway(ctx, transport.endpoint, b"gw-a")  # and the thread serves on
    gw.send(Hello(protocol_version=PROTOCOL_VERSION, gateway_id="gw-a"))
    assert gw.recv() == INFO


def test_sends_from_many_threads_all_arrive_in_each_threads_order(transport, ctx):
    transport.start(INFO)
    gw = Gateway(ctx, transport.endpoint, b"gw-a")
    gw.send(Hello(protocol_version=PROTOCOL_VERSION, gateway_id="gw-a"))
    assert gw.recv() == INFO

    def burst(tag: str) -> None:
        for i in range(200):
            transport.send(b"gw-a", StepOutputs(outputs=[RequestOutput(f"{tag}-{i}")]))

    threads = [threading.Thread(target=burst, args=(t,)) for t in ("x", "y", "z")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT)
    got: dict[str, list[int]] = {"x": [], "y": [], "z": []}
    for _ in range(600):
        msg = gw.recv()
        assert isinstance(msg, StepOutputs)
        tag, i = msg.outputs[0].request_id.split("-")
        got[tag].append(int(i))
    assert got == {t: list(range(200)) for t in got}


def test_close_says_goodbye_to_every_gateway_and_stops_the_thread(inbox, ctx):
    t = Transport("tcp://127.0.0.1:0", inbox)
    t.start(INFO)
    a, b = Gateway(ctx, t.endpoint, b"gw-a"), Gateway(ctx, t.endpoint, b"gw-b")
    for gw in (a, b):
        gw.send(Hello(protocol_version=PROTOCOL_VERSION, gateway_id=gw.identity.decode()))
        assert gw.recv() == INFO
    t.send(b"gw-a", StepOutputs(outputs=[RequestOutput("last", tokens=1)]))
    t.close("shutting down")
    assert not t._thread.is_alive()
    first = a.recv()
    assert isinstance(first, StepOutputs)  # what was queued before close is flushed first
    assert a.recv() == GoingAway(worker_id="w-test", reason="shutting down")
    assert b.recv() == GoingAway(worker_id="w-test", reason="shutting down")
