"""Batching, aborts and failures with real processes (tiny model)."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from tests.support.processes import free_port, start_gateway, start_worker, wait_healthy


def stream_tokens(base_url: str, text: str, max_tokens: int, timestamps: list[float], **extra) -> str:
    """Stream one completion, recording when each content chunk arrived."""
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "stream": True, "temperature": 0.0, **extra}
    out = []
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                timestamps.append(time.monotonic())
                out.append(chunk["choices"][0]["delta"]["content"])
    return "".join(out)


def test_eight_concurrent_streams_are_batched(tiny_stack):
    n, tokens = 8, 40
    stamps: list[list[float]] = [[] for _ in range(n)]
    results: list[str | None] = [None] * n

    def run(i: int) -> None:
        results[i] = stream_tokens(tiny_stack.base_url, f"Story number {i}", tokens, stamps[i])

    before = tiny_stack.worker_stats()[0]["steps"]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r for r in results), "every stream completes"
    # Interleaving: every stream produced tokens before the others finished.
    first_end = min(s[-1] for s in stamps)
    assert all(s[0] < first_end for s in stamps)
    # Batching: far fewer compute steps than tokens generated (one step serves many streams).
    steps = tiny_stack.worker_stats()[0]["steps"] - before
    assert steps < n * tokens * 0.6, f"{steps} steps for {n * tokens} tokens"


# The next tests need a request that is still running when the client leaves
# or the worker dies: a fake worker paced at STEP_RATE tokens a second makes
# that hold on any CPU (the real worker's own abort path is tested in
# process, and with the terminal client in tests/client/test_repl_e2e.py).
STEP_RATE = 20
LONG = 1500  # tokens: over a minute at STEP_RATE


def test_closed_stream_is_aborted_on_the_worker(make_fake_stack):
    stack = make_fake_stack(step_rate=STEP_RATE)
    body = {"messages": [{"role": "user", "content": "Go on forever"}], "max_tokens": LONG, "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=60) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i > 6:
                break  # leave mid-stream
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = stack.worker_stats()[0]
        if stats["aborted"] and stats["running"] == 0:
            break
        time.sleep(0.1)
    assert stats["aborted"] == 1
    assert stats["running"] == 0
    # and the worker keeps serving
    r = httpx.post(f"{stack.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}, timeout=60)
    assert r.status_code == 200


def test_disconnected_non_stream_request_is_aborted(make_fake_stack):
    stack = make_fake_stack(step_rate=STEP_RATE)
    body = {"messages": [{"role": "user", "content": "Go on forever"}], "max_tokens": LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and stack.worker_stats()[0]["aborted"] == 0:
        time.sleep(0.1)
    assert stack.worker_stats()[0]["aborted"] == 1


@pytest.mark.e2e  # starts a child process
def test_gateway_started_before_worker_waits_then_serves(tiny_model_path, log_dir):
    port = free_port()
    gateway, root = start_gateway([f"tcp://127.0.0.1:{port}"], log_dir)
    worker = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"{root}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 503
        assert r.json()["reason"]
        r = httpx.post(f"{root}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_worker"
        assert "retry-after" in r.headers
        worker, _ = start_worker(tiny_model_path, log_dir, port=port)
        wait_healthy(root, [gateway, worker])
        r = httpx.post(f"{root}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}, timeout=60)
        assert r.status_code == 200
    finally:
        gateway.stop()
        if worker:
            worker.stop()


def test_killed_worker_ends_streams_with_an_error_and_health_turns_503(make_fake_stack):
    stack = make_fake_stack(step_rate=STEP_RATE)
    body = {"messages": [{"role": "user", "content": "Keep going"}], "max_tokens": LONG, "stream": True}
    events: list[dict] = []
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
            if len(events) == 5:
                stack.workers[0].popen.send_signal(signal.SIGKILL)
    assert "error" in events[-1], events[-1]
    assert events[-1]["error"]["code"] == "worker_unavailable"
    r = httpx.get(f"{stack.root_url}/health", timeout=5)
    assert r.status_code == 503
    r = httpx.post(f"{stack.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "overloaded_error"


def test_worker_sigterm_drains_running_requests(make_stack, tiny_model_path):
    stack = make_stack(tiny_model_path)
    stamps: list[float] = []
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(stream_tokens(stack.base_url, "Drain me", 60, stamps)))
    t.start()
    deadline = time.monotonic() + 120
    while not stamps:
        assert time.monotonic() < deadline and t.is_alive(), "the stream never started"
        time.sleep(0.02)
    stack.workers[0].popen.send_signal(signal.SIGTERM)
    t.join(60)
    assert result and len(stamps) > 20  # the running stream finished rather than being cut
    assert stack.workers[0].popen.wait(30) == 0
