"""gateway.pool.WorkerPool over fake workers on real sockets: which worker a
request goes to, by model, conversation, load and queue limits, and how
the pool follows workers going down and coming back."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from gateway.config import GatewayConfig, WorkerSpec
from gateway.pool import NoWorkerAvailable, PoolFull, WorkerPool
from gateway.routing import rendezvous_order
from gateway.worker_client import QueueLimits
from protocol.chat import ChatMessage
from protocol.messages import ChatRequest, SamplingParams
from tests.support.fake_worker import FakeWorkerServer, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


def request(rid: str) -> ChatRequest:
    return ChatRequest(rid, [ChatMessage(role="user", content="hi")], SamplingParams(max_tokens=100))


class Fleet:
    def __init__(self, fakes: dict[str, FakeWorkerServer], pool: WorkerPool):
        self.fakes = fakes
        self.pool = pool

    def client(self, name: str):
        return next(w for w in self.pool.workers if w.worker_id == name)


async def start_fleet(stack: AsyncExitStack, models: dict[str, str], **pool_kwargs) -> Fleet:
    fakes = {name: await stack.enter_async_context(FakeWorkerServer(name, model_id=model)) for name, model in models.items()}
    pool = WorkerPool([f.address for f in fakes.values()], ping_interval=0.05, ping_timeout=30.0, **pool_kwargs)
    await pool.start()
    stack.push_async_callback(pool.close)
    await wait_until(lambda: len(pool.ready) == len(fakes), what="every worker ready")
    return Fleet(fakes, pool)


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with AsyncExitStack() as stack:
        yield await start_fleet(stack, {"a0": "alpha", "a1": "alpha", "a2": "alpha", "b0": "beta"})


async def test_models_and_their_resolution(fleet):
    pool = fleet.pool
    assert sorted(pool.models()) == ["alpha", "beta"]
    assert pool.resolve_model("beta") == "beta"
    assert pool.resolve_model("gpt-4") == "alpha"  # a placeholder: the first ready worker's model
    assert pool.resolve_model(None) == "alpha"
    assert [w.worker_id for w in pool.serving("alpha")] == ["a0", "a1", "a2"]


async def test_a_model_goes_to_its_own_workers(fleet):
    for i in range(5):
        worker, model = fleet.pool.choose("beta", None)
        assert (worker.worker_id, model) == ("b0", "beta")
        worker, model = fleet.pool.choose("alpha", f"conv-{i}")
        assert model == "alpha" and worker.worker_id.startswith("a")


async def test_a_conversation_sticks_to_its_rendezvous_worker(fleet):
    names = ["a0", "a1", "a2"]
    for i in range(12):
        conv = f"conv-{i}"
        expected = names[rendezvous_order(conv, names)[0]]
        picks = {fleet.pool.choose("alpha", conv)[0].worker_id for _ in range(3)}
        assert picks == {expected}
        assert fleet.pool.owner("alpha", conv)[0].worker_id == expected


async def test_without_a_conversation_the_least_loaded_worker_wins_and_ties_rotate(fleet):
    idle = Counter(fleet.pool.choose("alpha", None)[0].worker_id for _ in range(6))
    assert idle == {"a0": 2, "a1": 2, "a2": 2}  # ties rotate
    busy = fleet.client("a0")
    for i in range(2):
        await busy.submit(request(f"r{i}"))
    fleet.client("a1").state.inflight = 1
    assert {fleet.pool.choose("alpha", None)[0].worker_id for _ in range(6)} == {"a2"}


async def test_a_busy_conversation_worker_spills_to_the_next_ranked(fleet):
    names = ["a0", "a1", "a2"]
    conv = "sticky"
    order = [names[i] for i in rendezvous_order(conv, names)]
    fleet.client(order[0]).state.inflight = 50  # far above the mean and its batch size
    fleet.client(order[0]).state.info.max_running = 4
    worker, _ = fleet.pool.choose("alpha", conv)
    assert worker.worker_id == order[1]


async def test_excluded_and_full_workers_are_skipped_until_none_is_left():
    async with AsyncExitStack() as stack:
        fleet = await start_fleet(stack, {"a0": "alpha", "a1": "alpha"}, default_limits=QueueLimits(max_requests=1))
        for fake in fleet.fakes.values():
            fake.hold_admissions = True
        a0, a1 = fleet.client("a0"), fleet.client("a1")
        assert fleet.pool.choose("alpha", None, exclude=[a0])[0] is a1
        with pytest.raises(NoWorkerAvailable):
            fleet.pool.choose("alpha", None, exclude=[a0, a1])
        await a0.submit(request("q0"))  # one unadmitted request fills a queue of one
        assert a0.queue_full() is not None
        assert {fleet.pool.choose("alpha", "any-conv")[0].worker_id for _ in range(4)} == {"a1"}
        await a1.submit(request("q1"))
        with pytest.raises(PoolFull, match="every worker of alpha is at its queue limit"):
            fleet.pool.choose("alpha", None)
        await fleet.fakes["a1"].wait_for(ChatRequest)
        await fleet.fakes["a1"].admit_held()
        await fleet.fakes["a1"].step()  # q1 starts running: a1's queue is free again
        await wait_until(lambda: a1.queue_full() is None)
        assert fleet.pool.choose("alpha", None)[0] is a1


async def test_workers_leave_and_rejoin_the_choice(fleet):
    await fleet.fakes["b0"].close()
    await wait_until(lambda: not fleet.client("b0").ready, what="b0 down")
    with pytest.raises(NoWorkerAvailable, match="beta"):
        fleet.pool.choose("beta", None)
    assert fleet.pool.resolve_model("beta") == "beta"  # still known: not remapped to another model
    async with FakeWorkerServer("b0", model_id="beta", address=fleet.fakes["b0"].address):
        await wait_until(lambda: fleet.client("b0").ready, what="b0 back")
        assert fleet.pool.choose("beta", None)[0].worker_id == "b0"


async def test_no_ready_worker_at_all():
    pool = WorkerPool(["tcp://127.0.0.1:9"], ping_interval=0.05)  # nothing listens there
    await pool.start()
    try:
        with pytest.raises(NoWorkerAvailable, match="tcp://127.0.0.1:9"):
            pool.choose(None, None)
        assert pool.models() == {}
    finally:
        await pool.close()


def test_per_worker_limits_from_the_config():
    config = GatewayConfig(
        worker_specs=[WorkerSpec("tcp://127.0.0.1:1"), WorkerSpec("tcp://127.0.0.1:2", max_queued_requests=3, max_queued_tokens=0)],
        max_queued_requests=7,
        max_queued_tokens=900,
        ping_interval=1.5,
        ping_timeout=11.0,
    )
    pool = WorkerPool.from_config(config)
    assert [(w.address, w.limits) for w in pool.workers] == [
        ("tcp://127.0.0.1:1", QueueLimits(7, 900)),
        ("tcp://127.0.0.1:2", QueueLimits(3, 0)),
    ]
    assert {(w.ping_interval, w.ping_timeout, w.gateway_id) for w in pool.workers} == {(1.5, 11.0, pool.gateway_id)}
