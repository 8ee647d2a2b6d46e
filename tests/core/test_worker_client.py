"""gateway.worker_client.WorkerClient against a fake worker speaking the real
protocol over a real ZeroMQ socket on loopback, all on the test's event loop.
The fake steps only when the test says so; every wait has a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.output_stream import OutputStream
from gateway.worker_client import QueueLimits, WorkerClient, WorkerUnavailable
from protocol.chat import ChatMessage
from protocol.messages import (
    PROTOCOL_VERSION,
    Abort,
    ChatRequest,
    ControlCall,
    ControlReply,
    ErrorInfo,
    GoingAway,
    Hello,
    RequestOutput,
    SamplingParams,
    WorkerLoad,
)
from tests.support.fake_worker import WAIT, FakeWorkerServer, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def request(rid: str, text: str = "hello", max_tokens: int = 3) -> ChatRequest:
    return ChatRequest(rid, [ChatMessage(role="user", content=text)], SamplingParams(max_tokens=max_tokens))


async def connect(address: str, **kwargs) -> WorkerClient:
    kwargs = {"ping_interval": 0.05, "ping_timeout": 30.0, **kwargs}
    client = WorkerClient(address, gateway_id="gw-test", **kwargs)
    await client.start()
    return client


async def drain(stream: OutputStream) -> list[RequestOutput]:
    """Every output up to the final one (each wait bounded)."""
    outs: list[RequestOutput] = []
    while not outs or outs[-1].finish_reason is None:
        out = await stream.get(timeout=WAIT)
        assert out is not None, f"no output within {WAIT}s after {outs}"
        outs.append(out)
    return outs


@pytest.fixture
async def fake() -> AsyncIterator[FakeWorkerServer]:
    async with FakeWorkerServer("fake-0") as server:
        yield server


@pytest.fixture
async def client(fake: FakeWorkerServer) -> AsyncIterator[WorkerClient]:
    c = await connect(fake.address)
    await wait_until(lambda: c.ready, what="the worker ready")
    yield c
    await c.close()


# --------------------------------------------------------------------------- #
# Handshake and readiness
# --------------------------------------------------------------------------- #


async def test_handshake_then_a_ping_makes_the_worker_ready(fake, client):
    hello = fake.of_type(Hello)[0]
    assert (hello.protocol_version, hello.gateway_id) == (PROTOCOL_VERSION, "gw-test")
    assert fake.of_type(ControlCall)[0].method == "ping"  # ready only once the compute loop answers
    assert client.state.info.worker_id == "fake-0" and client.worker_id == "fake-0"
    assert client.state.reason == "ready"


async def test_a_worker_of_another_protocol_version_is_refused(fake):
    async with FakeWorkerServer("future", protocol_version=PROTOCOL_VERSION + 1) as other:
        c = await connect(other.address)
        try:
            await wait_until(lambda: "protocol" in c.state.reason, what="the refusal")
            assert not c.ready
            assert f"worker speaks protocol {PROTOCOL_VERSION + 1}" in c.state.reason
            assert not other.of_type(ControlCall)  # never pinged: never ready
            with pytest.raises(WorkerUnavailable):
                await c.submit(request("r"))
        finally:
            await c.close()


async def test_a_worker_whose_compute_loop_never_answers_is_not_ready(fake):
    fake.fake.answer_pings = False  # the IO thread answers the handshake, the loop is hung
    c = await connect(fake.address, ping_timeout=0.5)
    try:
        await fake.wait_for(Hello)
        await fake.wait_for(ControlCall)
        await wait_until(lambda: len(fake.of_type(Hello)) >= 2, what="a second hello")  # it keeps trying
        assert not c.ready and c.state.info is not None
        fake.fake.answer_pings = True
        await wait_until(lambda: c.ready, what="ready once pings are answered")
    finally:
        await c.close()


# --------------------------------------------------------------------------- #
# Requests
# --------------------------------------------------------------------------- #


async def test_outputs_reach_the_request_stream_in_order(fake, client):
    stream = await client.submit(request("r1", max_tokens=3))
    assert client.state.inflight == 1
    await fake.wait_for(ChatRequest)
    await fake.step(3)
    outs = await drain(stream)
    assert outs[0].cache_decision is not None and outs[0].prompt_tokens == len("hello")
    assert [o.content for o in outs[1:]] == ["tok "] * 3
    assert outs[-1].finish_reason == "length" and outs[-1].usage.completion_tokens == 3
    client.release("r1")
    assert client.state.inflight == 0 and client.queued() == (0, 0)
    client.release("r1")  # twice is harmless
    assert client.state.inflight == 0


async def test_many_requests_share_the_connection(fake, client):
    streams = {f"r{i}": await client.submit(request(f"r{i}", max_tokens=2 + i)) for i in range(5)}
    await wait_until(lambda: len(fake.fake.seqs) == 5, what="five admissions")
    await fake.run_to_end()
    for i, (rid, stream) in enumerate(streams.items()):
        outs = await drain(stream)
        assert {o.request_id for o in outs} == {rid}
        assert outs[-1].usage.completion_tokens == 2 + i
        client.release(rid)
    assert client.state.inflight == 0


async def test_the_queue_view_follows_admission_then_the_first_token(fake, client):
    """A request counts as queued from its send until its first token, first
    with no size, then with the prompt tokens the worker still has to prefill."""
    fake.hold_admissions = True
    stream = await client.submit(request("r", text="x" * 40, max_tokens=2))
    await fake.wait_for(ChatRequest)
    assert client.queued() == (1, 0)
    await fake.admit_held()
    first = await stream.get(timeout=WAIT)
    assert first.cache_decision.processing_tokens == 40
    assert client.queued() == (1, 40)
    await fake.step()
    assert (await stream.get(timeout=WAIT)).tokens == 1
    assert client.queued() == (0, 0)
    await fake.step()
    await drain(stream)
    client.release("r")
    assert client.queued() == (0, 0) and client.state.inflight == 0


async def test_a_refused_request_leaves_nothing_queued(fake, client):
    fake.fake.refuse = lambda _req: ErrorInfo("worker queue is full", type="overloaded_error", code="queue_full", status=503)
    stream = await client.submit(request("r"))
    outs = await drain(stream)
    assert len(outs) == 1 and outs[0].error.code == "queue_full"
    assert client.queued() == (0, 0)
    client.release("r")
    assert client.state.inflight == 0


async def test_queue_limits_from_the_worker_and_from_the_gateway(fake):
    async with FakeWorkerServer("small", max_queued=2) as small:
        small.hold_admissions = True
        c = await connect(small.address, limits=QueueLimits(max_requests=0, max_tokens=50))
        try:
            await wait_until(lambda: c.ready)
            assert c.queue_full() is None
            await c.submit(request("a", text="y" * 30))
            await small.wait_for(ChatRequest)
            assert c.queue_full() is None  # one request of unknown size
            await small.admit_held()
            await wait_until(lambda: c.queued() == (1, 30))
            assert c.queue_full() is None
            await c.submit(request("b", text="z" * 30))
            await small.wait_for(ChatRequest, lambda m: m.request_id == "b")
            assert c.queue_full() == "2 requests are queued (limit 2)"  # the worker's --max-queued
            c.limits = QueueLimits(max_requests=5, max_tokens=50)
            await small.admit_held()
            await wait_until(lambda: c.queued() == (2, 60))
            assert c.queue_full() == "60 prompt tokens are queued (limit 50)"
            c.limits = QueueLimits(max_requests=5, max_tokens=0)  # 0: no token limit
            assert c.queue_full() is None
        finally:
            await c.close()


async def test_the_workers_own_report_counts_other_gateways_requests(fake, client):
    client.state.load = WorkerLoad(running=3, waiting=4)
    assert client.queued() == (4, 0)
    assert client.load() == 7
    client.state.inflight = 9  # fresher and larger than the report
    assert client.load() == 9


async def test_pings_refresh_the_reported_load(fake, client):
    other = await connect(fake.address)
    try:
        await wait_until(lambda: other.ready)
        await other.submit(request("theirs", max_tokens=50))
        await wait_until(lambda: "theirs" in fake.fake.seqs)
        # This gateway has nothing there; its pings bring the worker's load.
        await wait_until(lambda: client.state.load.running == 1, what="the load from a ping")
        assert client.load() == 1
    finally:
        await other.close()


async def test_abort_nowait_releases_and_tells_the_worker(fake, client):
    await client.submit(request("r", max_tokens=100))
    await wait_until(lambda: "r" in fake.fake.seqs)
    client.abort_nowait("r")
    assert client.state.inflight == 0 and client.queued() == (0, 0)
    abort = await fake.wait_for(Abort)
    assert abort.request_ids == ["r"]
    await wait_until(lambda: "r" not in fake.fake.seqs)


# --------------------------------------------------------------------------- #
# Control calls
# --------------------------------------------------------------------------- #


async def test_control_calls_get_their_own_replies(fake, client):
    fake.fake.controls["conv_stats"] = lambda args: {"items": [], "echo": args}
    stats = await client.call("stats")
    conv = await client.call("conv_stats", {"x": 1})
    assert stats.ok and stats.result["worker_id"] == "fake-0"
    assert conv.result == {"items": [], "echo": {"x": 1}}
    unknown = await client.call("conv_delete")
    assert not unknown.ok and unknown.error.status == 404


async def test_an_unanswered_call_times_out_as_unavailable(fake, client):
    fake.fake.answer_pings = False
    with pytest.raises(WorkerUnavailable, match="did not answer ping"):
        await client.call("ping", timeout=0.05)
    # Nothing of that call is left behind (the liveness loop's own ping may be in flight).
    assert all(not f.done() for f in client._calls.values())
    assert client.ready  # one slow answer does not make a worker down


# --------------------------------------------------------------------------- #
# Losing the worker
# --------------------------------------------------------------------------- #


async def test_a_dead_worker_ends_every_stream_and_is_readmitted_when_back(fake, client):
    streams = [await client.submit(request(f"r{i}", max_tokens=50)) for i in range(2)]
    await wait_until(lambda: len(fake.fake.seqs) == 2)
    await fake.step()
    await fake.close()  # killed: no goodbye
    for stream in streams:
        outs = await drain(stream)
        final = outs[-1]
        assert (final.finish_reason, final.error.status, final.error.code) == ("error", 503, "worker_unavailable")
    assert not client.ready and client.state.inflight == 0 and client.queued() == (0, 0)
    with pytest.raises(WorkerUnavailable):
        await client.submit(request("while-down"))
    async with FakeWorkerServer("fake-0b", address=fake.address) as back:
        await wait_until(lambda: client.ready, what="readmission")
        assert client.worker_id == "fake-0b"
        stream = await client.submit(request("again", max_tokens=1))
        await back.wait_for(ChatRequest)
        await back.step()
        assert (await drain(stream))[-1].finish_reason == "length"


async def test_going_away_ends_streams_at_once(fake, client):
    stream = await client.submit(request("r", max_tokens=50))
    await wait_until(lambda: "r" in fake.fake.seqs)
    await fake.broadcast(GoingAway(worker_id="fake-0", reason="shutdown"))
    final = (await drain(stream))[-1]
    assert final.error.code == "worker_unavailable" and "went away: shutdown" in final.error.message
    assert not client.ready
    # A worker that said goodbye but still answers is taken back by the next hello.
    await wait_until(lambda: client.ready, what="readmission")


async def test_silence_past_the_ping_timeout_marks_the_worker_down_and_back(fake):
    c = await connect(fake.address, ping_timeout=0.5)
    try:
        await wait_until(lambda: c.ready)
        stream = await c.submit(request("r", max_tokens=50))
        await wait_until(lambda: "r" in fake.fake.seqs)
        fake.fake.answer_pings = False  # the compute loop hangs
        await wait_until(lambda: not c.ready, what="marked down")
        assert c.state.reason == "worker stopped answering pings"
        assert (await drain(stream))[-1].error.code == "worker_unavailable"
        fake.fake.answer_pings = True
        await wait_until(lambda: c.ready, what="readmitted")
    finally:
        await c.close()


async def test_close_ends_open_streams(fake):
    c = await connect(fake.address)
    await wait_until(lambda: c.ready)
    stream = await c.submit(request("r", max_tokens=50))
    await c.close()
    final = (await drain(stream))[-1]
    assert final.error.code == "worker_unavailable" and "shutting down" in final.error.message
    assert not c.ready


async def test_close_closes_every_socket_and_may_be_repeated(fake):
    """Regression: close() left the socket monitor's PAIR socket open (a
    leak per worker connection, and a context that blocks at exit)."""
    c = await connect(fake.address)
    await wait_until(lambda: c.ready)
    sockets = [c._sock, c._monitor]
    await c.close()
    assert all(s is not None and s.closed for s in sockets)
    await c.close()  # a second close (e.g. pool shutdown after a failed start) is harmless
    with pytest.raises(WorkerUnavailable):
        await c.call("stats")  # not an AssertionError from a closed socket


async def test_a_cancelled_call_stays_cancelled_when_the_reply_comes_with_the_cancel(fake, client):
    """Regression: call() used asyncio.wait_for, which before Python 3.12
    returns the result and drops the cancellation when both land in the same
    loop turn. The liveness loop, cancelled by close() just as a ping reply
    came in, then pinged on forever and close() (gateway shutdown) hung."""
    fake.fake.answer_pings = False  # the test delivers this reply itself
    before = set(client._calls)
    call = asyncio.create_task(client.call("ping"))
    new = await wait_until(lambda: set(client._calls) - before, what="the call in flight")
    (call_id,) = new
    client._calls[call_id].set_result(ControlReply(call_id))  # the reply arrives...
    call.cancel()  # ...in the same loop turn as the cancellation
    with pytest.raises(asyncio.CancelledError):
        await call
    assert call_id not in client._calls
