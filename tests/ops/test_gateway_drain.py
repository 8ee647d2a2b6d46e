"""Gateway SIGTERM during a stream: the stream completes, new requests get
503, /health says draining, and the process exits 0 (real processes)."""

from __future__ import annotations

import json
import signal
import threading

import httpx

from tests.support.metrics import scrape, total


def test_sigterm_drains_a_running_stream_then_exits_0(make_fake_stack):
    # A fake worker at 20 tokens a second: the stream is still running while
    # we probe (15 s), on any CPU.
    stack = make_fake_stack(step_rate=20, gateway_args=["--drain-timeout", "300"])
    max_tokens = 300
    body = {"messages": [{"role": "user", "content": "Keep talking"}], "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    started = threading.Event()
    events: list[dict] = []
    lines: list[str] = []

    def consume() -> None:
        with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=300) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line)
                    if line != "data: [DONE]":
                        events.append(json.loads(line[6:]))
                    if len(events) == 3:
                        started.set()

    t = threading.Thread(target=consume)
    t.start()
    assert started.wait(120), "the stream never started"
    stack.gateway.popen.send_signal(signal.SIGTERM)

    # Draining: health is 503, new work is refused with an OpenAI-shaped 503,
    # and the stream we started is still counted as in flight.
    health = httpx.get(f"{stack.root_url}/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert health.json()["workers"][0]["inflight"] == 1
    r = httpx.post(f"{stack.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "shutting_down"
    assert "retry-after" in r.headers
    assert total(scrape(stack.root_url), "kmlx:admission_rejections_total", reason="shutting_down") == 1

    t.join(300)
    assert not t.is_alive()
    assert lines[-1] == "data: [DONE]"
    assert not any("error" in e for e in events)
    assert events[-1]["usage"]["completion_tokens"] == max_tokens  # ran to the end, not cut
    assert stack.gateway.popen.wait(60) == 0
