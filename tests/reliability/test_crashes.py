"""Clients and processes that vanish mid-stream (real processes): an abort
storm leaves nothing behind, and kill -9 of the worker or of the gateway
ends every affected stream cleanly while the survivors keep serving."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx

from tests.reliability.support import BackgroundStream, chat, client
from tests.support.metrics import scrape, total
from tests.support.processes import start_gateway, start_worker, wait_healthy, wait_until

STREAM = {"messages": [{"role": "user", "content": "Keep talking"}], "max_tokens": 200, "ignore_eos": True, "stream": True}


def idle(stack) -> bool:
    w = stack.worker_stats()[0]
    h = client().get(f"{stack.root_url}/health").json()["workers"][0]
    return (w["running"], w["waiting"], h["inflight"], h["queued_requests"]) == (0, 0, 0, 0)


async def storm(base_url: str, n: int) -> int:
    """``n`` streams opened at once; each is dropped after its first event,
    or before any answer (a third of them), never read to the end."""
    started = 0

    async def one(i: int, http: httpx.AsyncClient) -> None:
        nonlocal started
        if i % 3 == 0:  # gone before the answer: cancelled while the request is in flight
            task = asyncio.ensure_future(http.post(f"{base_url}/chat/completions", json=STREAM))
            await asyncio.sleep(0.01 * (i % 7))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return
        async with http.stream("POST", f"{base_url}/chat/completions", json=STREAM) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    started += 1
                    return  # leaving the block closes the connection mid-stream

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(one(i, http) for i in range(n)), return_exceptions=True)
    return started


def test_an_abort_storm_leaves_nothing_behind(make_stack, tiny_model_path):
    stack = make_stack(tiny_model_path, worker_args=["--max-queued", "256"])
    started = asyncio.run(storm(stack.base_url, 200))
    assert started > 50  # most streams really started before they were dropped
    wait_until("the worker and the gateway are idle again", lambda: idle(stack))
    t0 = time.monotonic()
    r = chat(stack, "Short one", max_tokens=5, ignore_eos=True)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    metrics = scrape(stack.root_url)
    assert total(metrics, "kmlx:gateway_requests_inflight") == 0
    assert total(metrics, "kmlx:request_aborted_total") >= started
    w = stack.worker_stats()[0]
    assert w["errors"] == 0 and w["aborted"] >= started
    print(f"200 dropped streams ({started} after their first event); then a short request took {time.monotonic() - t0:.2f} s")


def test_kill_9_of_the_worker_mid_stream(make_stack, tiny_model_path, log_dir):
    stack = make_stack(tiny_model_path)
    stream = BackgroundStream(stack, max_tokens=300).start(min_events=5)
    t0 = time.monotonic()
    stack.workers[0].popen.send_signal(signal.SIGKILL)
    stream.join(timeout=60)
    ended_in = time.monotonic() - t0
    assert stream.status == 200 and stream.done_line  # the stream ends with an error event, then [DONE]
    assert len(stream.errors) == 1 and stream.errors[0]["error"]["code"] == "worker_unavailable"
    r = client().get(f"{stack.root_url}/health")
    assert r.status_code == 503 and not r.json()["workers"][0]["ready"]
    r = chat(stack, "Anyone?")
    assert r.status_code == 503 and "retry-after" in r.headers

    port = int(stack.worker_addresses[0].rsplit(":", 1)[1])
    new, _ = start_worker(tiny_model_path, log_dir, port=port, name="worker")
    stack.workers[0] = new
    wait_healthy(stack.root_url, [stack.gateway, new])
    r = chat(stack, "Back?", max_tokens=3, ignore_eos=True)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    print(f"the stream ended with an error {ended_in:.2f} s after kill -9 of its worker")


def test_kill_9_of_the_gateway_mid_stream(make_stack, tiny_model_path, log_dir):
    stack = make_stack(tiny_model_path)
    # A second gateway on the same worker: it watches the worker, and serves on.
    other, other_url = start_gateway(stack.worker_addresses, log_dir, name="gateway-2")
    stack.extra.append(other)
    wait_healthy(other_url, [other])
    stream = BackgroundStream(stack, max_tokens=2000).start(min_events=5)
    stack.gateway.popen.send_signal(signal.SIGKILL)
    stream.join(timeout=60)
    assert not stream.done_line and stream.error is not None  # the connection broke: no clean end to fake

    def worker_idle() -> bool:
        stats = httpx.get(f"{other_url}/v1/stats", timeout=10).json()["workers"][0]
        return stats["running"] == 0 and stats["waiting"] == 0

    # The worker notices the gateway is gone (its next send fails) and aborts the orphan.
    wait_until("the worker aborted the dead gateway's stream", worker_idle)
    stats = httpx.get(f"{other_url}/v1/stats", timeout=10).json()["workers"][0]
    assert stats["aborted"] == 1 and stats["errors"] == 0
    r = httpx.post(f"{other_url}/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "Still here?"}], "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert json.loads(r.text)["choices"][0]["finish_reason"] == "length"
