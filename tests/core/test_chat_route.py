"""The gateway's HTTP side in-process: the real FastAPI app (routes,
middleware, pool, worker clients) in front of fake workers that speak the
real protocol over real ZeroMQ sockets on loopback, on the test's event
loop. The fakes step only when a test says so (or ``keep_stepping``), so
streaming, keep-alives and failures happen exactly where the test puts them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from gateway import dispatch
from gateway.app import create_app
from gateway.config import GatewayConfig
from protocol.messages import (
    Abort,
    ChatRequest,
    ErrorInfo,
    GoingAway,
    RequestOutput,
    StepOutputs,
    Usage,
)
from tests.support.asgi import AsgiExchange, sse_data
from tests.support.fake_worker import WAIT, FakeWorkerServer, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

PATH = "/v1/chat/completions"


def body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 3, **extra}


@dataclass
class Gateway:
    app: FastAPI
    http: httpx.AsyncClient

    def stream(self, json_body: dict[str, Any], **kwargs: Any) -> AsgiExchange:
        return AsgiExchange(self.app, "POST", PATH, json_body={**json_body, "stream": True}, **kwargs)

    def exchange(self, json_body: dict[str, Any], **kwargs: Any) -> AsgiExchange:
        return AsgiExchange(self.app, "POST", PATH, json_body=json_body, **kwargs)


@asynccontextmanager
async def gateway(*fakes: FakeWorkerServer, **config: Any) -> AsyncIterator[Gateway]:
    """The app in front of ``fakes``, started (lifespan) and with every worker ready."""
    cfg = GatewayConfig(workers=[f.address for f in fakes], **{"ping_interval": 0.05, "ping_timeout": 30.0, **config})
    app = create_app(cfg)
    try:
        async with app.router.lifespan_context(app):
            await wait_until(lambda: len(app.state.pool.ready) == len(fakes), what="every worker ready")
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as http:
                yield Gateway(app, http)
    finally:  # the lifespan closes the pool on a normal exit only; a failed test must not leak it
        with anyio.CancelScope(shield=True):
            await app.state.pool.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeWorkerServer]:
    async with FakeWorkerServer("fake-0") as server:
        yield server


def assert_error(r: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    return err


# --------------------------------------------------------------------------- #
# Answers
# --------------------------------------------------------------------------- #


async def test_a_whole_answer_with_usage_and_headers(fake):
    fake.keep_stepping()
    async with gateway(fake) as gw:
        r = await gw.http.post(PATH, json=body(conversation="conv-1"))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["model"] == "fake"
    assert data["choices"][0]["message"]["content"] == "tok " * 3
    assert data["choices"][0]["finish_reason"] == "length"
    assert (data["usage"]["prompt_tokens"], data["usage"]["completion_tokens"]) == (len("hello"), 3)
    assert r.headers["x-worker-id"] == "fake-0"
    assert r.headers["x-request-id"] == data["id"] and data["id"].startswith("chatcmpl-")
    assert (r.headers["x-conv-id"], r.headers["x-conv-kv"], r.headers["x-conv-processing-tokens"]) == ("conv-1", "none", "5")
    wire = fake.of_type(ChatRequest)[0]
    assert (wire.request_id, wire.conversation_id, wire.sampling.max_tokens) == (data["id"], "conv-1", 3)
    assert wire.deadline is not None  # --request-timeout reaches the worker


async def test_the_clients_request_id_is_used_end_to_end(fake):
    fake.keep_stepping()
    async with gateway(fake) as gw:
        r = await gw.http.post(PATH, json=body(), headers={"X-Request-Id": "my-id-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "my-id-1" and r.json()["id"] == "my-id-1"
    assert fake.of_type(ChatRequest)[0].request_id == "my-id-1"


async def test_a_stream_relays_each_step_as_it_comes(fake):
    async with gateway(fake) as gw, gw.stream(body(max_tokens=3, stream_options={"include_usage": True})) as ex:
        assert await ex.head() == 200 and ex.headers["content-type"].startswith("text/event-stream")
        assert ex.headers["x-worker-id"] == "fake-0"
        role = await ex.next_data()
        assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        for _ in range(2):
            await fake.step()  # one step, one chunk: the relay does not wait for more
            delta = await ex.next_data()
            assert delta["choices"][0]["delta"] == {"content": "tok "}
        await fake.step()
        rest = sse_data(await ex.events())
    assert rest[0]["choices"][0]["delta"] == {"content": "tok "}
    assert rest[1]["choices"][0]["finish_reason"] == "length"
    assert rest[2]["choices"] == [] and rest[2]["usage"]["completion_tokens"] == 3
    assert rest[3] == "[DONE]"


async def test_keep_alive_comments_while_the_worker_is_silent(fake):
    async with gateway(fake, keep_alive_seconds=0.02) as gw, gw.stream(body(max_tokens=1)) as ex:
        await ex.event()  # role
        assert [await ex.event(), await ex.event()] == [": keep-alive", ": keep-alive"]
        await fake.step()
        events = [e for e in await ex.events() if e != ": keep-alive"]
    data = sse_data(events)
    assert data[0]["choices"][0]["delta"] == {"content": "tok "} and data[-1] == "[DONE]"


async def test_a_worker_error_before_any_token_is_the_http_error(fake):
    fake.fake.refuse = lambda _req: ErrorInfo("too long", code="context_length_exceeded", param="messages", status=400)
    async with gateway(fake) as gw:
        r = await gw.http.post(PATH, json=body())
        s = await gw.http.post(PATH, json=body(stream=True))
    err = assert_error(r, 400, "context_length_exceeded")
    assert (err["message"], err["param"]) == ("too long", "messages")
    assert r.headers["x-worker-id"] == "fake-0" and r.headers["x-request-id"]
    assert_error(s, 400, "context_length_exceeded")  # a stream that never started is a plain error too


async def test_max_tokens_beyond_the_context_is_refused_by_the_gateway():
    async with FakeWorkerServer("small", context_length=100) as small, gateway(small) as gw:
        r = await gw.http.post(PATH, json=body(max_tokens=101))
        r2 = await gw.http.post(PATH, json={**body(), "max_tokens": None, "max_completion_tokens": 500})
    assert assert_error(r, 400, "invalid_value")["param"] == "max_tokens"
    assert assert_error(r2, 400, "invalid_value")["param"] == "max_completion_tokens"
    assert not small.of_type(ChatRequest)  # refused before any worker work


# --------------------------------------------------------------------------- #
# Failures
# --------------------------------------------------------------------------- #


async def test_a_worker_dying_mid_stream_ends_it_with_an_error_event(fake):
    async with gateway(fake) as gw, gw.stream(body(max_tokens=50)) as ex:
        await ex.event()
        await fake.step()
        assert (await ex.next_data())["choices"][0]["delta"] == {"content": "tok "}
        await fake.close()
        data = sse_data(await ex.events())
    assert data[0]["error"]["code"] == "worker_unavailable" and data[0]["error"]["type"] == "server_error"
    assert data[-1] == "[DONE]"


async def test_a_worker_going_away_mid_stream_ends_it_with_an_error_event(fake):
    async with gateway(fake) as gw, gw.stream(body(max_tokens=50)) as ex:
        await ex.event()
        await fake.step()
        await ex.event()
        await fake.broadcast(GoingAway(worker_id="fake-0", reason="shutdown"))
        data = sse_data(await ex.events())
    assert data[0]["error"]["code"] == "worker_unavailable" and "went away" in data[0]["error"]["message"]


async def test_a_worker_cut_mid_stream_says_so(fake):
    """The worker ends a request with "abort" only when it shuts down past
    its drain timeout: the client gets an error, not a silent stop."""
    async with gateway(fake) as gw, gw.stream(body(max_tokens=50)) as ex:
        await ex.event()
        wire = await fake.wait_for(ChatRequest)
        fake.fake.seqs.clear()
        client = next(iter(fake.clients))
        await fake.send(client, StepOutputs([RequestOutput(wire.request_id, finish_reason="abort", usage=Usage())]))
        data = sse_data(await ex.events())
    assert data[0]["error"]["code"] == "worker_unavailable" and "shutting down" in data[0]["error"]["message"]


@pytest.mark.parametrize("failure", ["dies", "goes_away"])
async def test_a_whole_answer_is_retried_on_another_worker_when_the_first_fails(failure):
    async with FakeWorkerServer("w0") as w0, FakeWorkerServer("w1") as w1, gateway(w0, w1) as gw:
        task = asyncio.create_task(gw.http.post(PATH, json=body(max_tokens=3)))
        first = await wait_until(lambda: next((f for f in (w0, w1) if f.of_type(ChatRequest)), None), what="a worker chosen")
        other = w1 if first is w0 else w0
        await first.step()  # it has generated a token: nothing reached the client yet
        if failure == "dies":
            await first.close()
        else:
            await first.broadcast(GoingAway(worker_id=first.fake.info.worker_id, reason="shutdown"))
        other.keep_stepping()
        r = await asyncio.wait_for(task, WAIT)
    assert r.status_code == 200, r.text
    assert r.headers["x-worker-id"] == other.fake.info.worker_id
    assert r.json()["choices"][0]["message"]["content"] == "tok " * 3  # the second run only
    assert other.of_type(ChatRequest)[0].request_id == first.of_type(ChatRequest)[0].request_id


async def test_a_full_worker_queue_sends_the_request_to_another_worker():
    async with FakeWorkerServer("w0") as w0, FakeWorkerServer("w1") as w1, gateway(w0, w1) as gw:
        full = ErrorInfo("worker queue is full, retry shortly", type="overloaded_error", code="queue_full", status=503)
        w0.fake.refuse = w1.fake.refuse = lambda _req: full
        r = await gw.http.post(PATH, json=body())
        assert_error(r, 503, "queue_full")
        assert r.headers["retry-after"] == "1"
        assert len(w0.of_type(ChatRequest)) == len(w1.of_type(ChatRequest)) == 1  # each tried once
        w1.fake.refuse = lambda _req: None
        w1.keep_stepping()
        r = await gw.http.post(PATH, json=body())
        assert r.status_code == 200 and r.headers["x-worker-id"] == "w1"


async def test_the_gateways_queue_limit_answers_503_before_the_worker_sees_it(fake):
    fake.hold_admissions = True
    async with gateway(fake, max_queued_requests=1) as gw:
        waiting = asyncio.create_task(gw.http.post(PATH, json=body()))
        await fake.wait_for(ChatRequest)
        r = await gw.http.post(PATH, json=body())
        assert_error(r, 503, "queue_full")
        assert r.headers["retry-after"] == "1"
        assert len(fake.of_type(ChatRequest)) == 1  # refused by the gateway itself
        await fake.admit_held()
        await fake.run_to_end()
        assert (await asyncio.wait_for(waiting, WAIT)).status_code == 200
        fake.hold_admissions = False
        fake.keep_stepping()
        assert (await gw.http.post(PATH, json=body())).status_code == 200  # room again


async def test_no_ready_worker_is_503_with_retry_after(fake):
    async with gateway(fake) as gw:
        await fake.close()
        await wait_until(lambda: not gw.app.state.pool.ready, what="the worker down")
        r = await gw.http.post(PATH, json=body())
        health = await gw.http.get("/health")
    assert_error(r, 503, "no_worker")
    assert r.headers["retry-after"] == "2"
    assert health.status_code == 503 and health.json()["status"] == "unavailable"


async def test_a_draining_gateway_refuses_new_requests(fake):
    async with gateway(fake) as gw:
        gw.app.state.draining = True
        r = await gw.http.post(PATH, json=body())
        health = await gw.http.get("/health")
    assert_error(r, 503, "shutting_down")
    assert r.headers["retry-after"] == "5"
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert not fake.of_type(ChatRequest)


async def test_a_request_the_worker_never_admits_times_out_and_is_aborted(fake, monkeypatch):
    monkeypatch.setattr(dispatch, "_DEADLINE_GRACE", 0.0)
    fake.hold_admissions = True
    async with gateway(fake, request_timeout=0.05) as gw:
        r = await gw.http.post(PATH, json=body())
        assert_error(r, 504, "deadline_exceeded")
        wire = fake.of_type(ChatRequest)[0]
        await fake.wait_for(Abort, lambda m: wire.request_id in m.request_ids)


async def test_a_stream_the_worker_stops_feeding_ends_at_the_deadline(fake, monkeypatch):
    monkeypatch.setattr(dispatch, "_DEADLINE_GRACE", 0.0)
    async with gateway(fake, request_timeout=0.2, keep_alive_seconds=0.02) as gw, gw.stream(body(max_tokens=50)) as ex:
        events = await ex.events()
        wire = fake.of_type(ChatRequest)[0]
        await fake.wait_for(Abort, lambda m: wire.request_id in m.request_ids)
    data = sse_data(events)
    assert data[-2]["error"]["code"] == "deadline_exceeded" and data[-1] == "[DONE]"


# --------------------------------------------------------------------------- #
# Clients that leave
# --------------------------------------------------------------------------- #


async def test_a_client_leaving_a_stream_aborts_the_request_on_the_worker(fake):
    async with gateway(fake) as gw:
        async with gw.stream(body(max_tokens=500)) as ex:
            await ex.event()
            await fake.step()
            await ex.event()
            ex.disconnect()
            await fake.step()  # the relay notices when it next writes
            wire = fake.of_type(ChatRequest)[0]
            await fake.wait_for(Abort, lambda m: m.request_ids == [wire.request_id])
        pool = gw.app.state.pool
        await wait_until(lambda: pool.workers[0].state.inflight == 0, what="the request released")


async def test_a_client_leaving_before_a_whole_answer_aborts_the_request(fake):
    async with gateway(fake) as gw:
        async with gw.exchange(body(max_tokens=500)) as ex:
            wire = await fake.wait_for(ChatRequest)
            await fake.step(2)  # generating; a whole answer sends nothing until the end
            ex.disconnect()
            await fake.wait_for(Abort, lambda m: m.request_ids == [wire.request_id])
        assert ex.status in (None, 499)  # nobody is listening any more
        pool = gw.app.state.pool
        await wait_until(lambda: pool.workers[0].state.inflight == 0, what="the request released")


# --------------------------------------------------------------------------- #
# Control calls and health
# --------------------------------------------------------------------------- #


async def test_models_health_and_stats(fake):
    async with gateway(fake) as gw:
        models = (await gw.http.get("/v1/models")).json()
        health = (await gw.http.get("/health")).json()
        stats = (await gw.http.get("/v1/stats")).json()
    assert [m["id"] for m in models["data"]] == ["fake"]
    assert health["status"] == "ok"
    [w] = health["workers"]
    assert (w["worker_id"], w["ready"], w["inflight"], w["queue_full"]) == ("fake-0", True, 0, None)
    assert stats["workers"][0]["worker_id"] == "fake-0" and stats["total"]["workers"] == 1


async def test_conversation_cache_calls_reach_the_worker(fake):
    seen: list[tuple[str, dict]] = []

    def handler(method: str):
        def handle(args: dict) -> dict:
            seen.append((method, args))
            if method == "conv_stats":
                return {"items": [{"id": "c1", "tokens": 5}], "in_memory": []}
            return {"status": "saved" if method == "conv_save" else "deleted", "id": args["conversation_id"]}
        return handle

    for method in ("conv_save", "conv_stats", "conv_delete"):
        fake.fake.controls[method] = handler(method)
    async with gateway(fake) as gw:
        saved = await gw.http.post("/v1/conv_kv/save", json={"conversation": "c1", "title": "t"})
        listed = await gw.http.get("/v1/conv_kv/stats")
        deleted = await gw.http.delete("/v1/conv_kv/c1")
        missing = await gw.http.post("/v1/conv_kv/load", json={"conversation": "c1"})
    assert saved.json() == {"status": "saved", "id": "c1"}
    assert listed.json()["items"] == [{"id": "c1", "tokens": 5, "worker": "fake-0"}]
    assert deleted.json()["status"] == "deleted"
    assert_error(missing, 404, None)  # the fake has no conv_load
    # The model travels with each call: a --models-dir worker keeps each model's conversations apart.
    assert seen == [("conv_save", {"conversation_id": "c1", "title": "t", "model": "fake"}), ("conv_stats", {}),
                    ("conv_delete", {"conversation_id": "c1", "model": "fake"})]


async def test_a_hung_worker_turns_health_503_and_back(fake):
    async with gateway(fake, ping_timeout=0.5) as gw:
        assert (await gw.http.get("/health")).status_code == 200
        fake.fake.answer_pings = False
        await wait_until(lambda: not gw.app.state.pool.ready, what="marked down")
        health = await gw.http.get("/health")
        assert health.status_code == 503 and "stopped answering pings" in health.json()["reason"]
        fake.fake.answer_pings = True
        await wait_until(lambda: gw.app.state.pool.ready, what="readmitted")
        assert (await gw.http.get("/health")).status_code == 200
