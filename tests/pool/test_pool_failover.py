"""A worker dies mid-stream, the pool carries on, and the worker rejoins."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from gateway.routing import rendezvous_order
from tests.pool.support import StreamResult, chat, stream
from tests.support.processes import start_fake_worker

NAMES = ["w0", "w1"]
FAKE_STEP_RATE = 50


def conversations_homed_on(name: str, count: int, prefix: str) -> list[str]:
    """Conversation ids whose rendezvous-first worker is ``name``."""
    out: list[str] = []
    n = 0
    while len(out) < count:
        key = f"{prefix}-{n}"
        if NAMES[rendezvous_order(key, NAMES)[0]] == name:
            out.append(key)
        n += 1
    return out


def test_kill_9_mid_stream_fails_only_that_workers_streams_and_it_rejoins(make_pool, tiny_model_path: Path):
    # Fake workers at 50 tokens a second: the streams are still running when
    # w0 is killed, however fast the CPU (600 tokens take 12 s).
    pool = make_pool({n: tiny_model_path for n in NAMES}, gateways=[[], []], fake_step_rate=FAKE_STEP_RATE)
    victim_convs = conversations_homed_on("w0", 2, "doomed")
    survivor_convs = conversations_homed_on("w1", 2, "lucky")
    results: dict[str, StreamResult] = {}
    plain_result: list[httpx.Response] = []
    started = {c: threading.Event() for c in victim_convs + survivor_convs}

    def run(conv: str, gateway: int) -> None:
        def seen(res: StreamResult) -> None:
            if len(res.events) >= 3:
                started[conv].set()

        results[conv] = stream(pool.url(gateway), "Tell a long story", max_tokens=600, ignore_eos=True, conversation=conv, on_event=seen)
        started[conv].set()  # also when it ended early, so the test never waits forever

    def run_plain() -> None:  # a non-streamed request: no byte sent until it is complete
        plain_result.append(chat(pool.url(0), "Tell a long story", max_tokens=600, ignore_eos=True, conversation=victim_convs[0]))

    threads = [threading.Thread(target=run, args=(c, i % 2)) for i, c in enumerate(victim_convs + survivor_convs)]
    threads.append(threading.Thread(target=run_plain))
    for t in threads:
        t.start()
    for e in started.values():
        assert e.wait(120)
    deadline = time.monotonic() + 60
    while next(w for w in pool.health(0)["workers"] if w["worker_id"] == "w0")["inflight"] < 2:
        assert time.monotonic() < deadline, "gateway 0 never had two requests on w0"
        time.sleep(0.05)  # gateway 0 has sent w0 one stream and the plain request
    victim, victim_address = pool.workers["w0"]
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait(10)

    for t in threads:
        t.join(180)
    for conv in victim_convs:
        r = results[conv]
        assert r.status == 200 and r.headers["x-worker-id"] == "w0"
        assert r.error is not None and r.error["code"] == "worker_unavailable", r.events[-1:]
        assert r.done  # the stream is closed properly: error event, then [DONE]
    for conv in survivor_convs:
        r = results[conv]
        assert r.headers["x-worker-id"] == "w1" and r.error is None
        assert r.finish_reason == "length" and r.done
    # The non-streamed request had sent nothing yet: it was run again on w1.
    assert plain_result, "the non-streamed request did not return"
    plain = plain_result[0]
    assert plain.status_code == 200 and plain.headers["x-worker-id"] == "w1", plain.text
    assert plain.json()["usage"]["completion_tokens"] == 600

    # Both gateways now send everything, w0's conversations too, to the survivor.
    for g in (0, 1):
        assert {w["worker_id"]: w["ready"] for w in pool.health(g)["workers"]} == {"w0": False, "w1": True}
        for conv in victim_convs:
            resp = chat(pool.url(g), "still there?", conversation=conv)
            assert resp.status_code == 200 and resp.headers["x-worker-id"] == "w1"

    # Restarted on the same address, it rejoins both gateways by itself and
    # gets its conversations back.
    port = int(victim_address.rsplit(":", 1)[1])
    pool.workers["w0"] = start_fake_worker(pool.log_dir, step_rate=FAKE_STEP_RATE, name="w0", port=port)
    for g in (0, 1):
        pool.wait_ready({"w0", "w1"}, gateway=g, timeout=120)
        resp = chat(pool.url(g), "back again", conversation=victim_convs[0])
        assert resp.status_code == 200 and resp.headers["x-worker-id"] == "w0"


def test_a_hung_worker_is_marked_down_by_pings_and_rejoins(make_pool, tiny_model_path: Path):
    """A worker that went silent without a clean disconnect (SIGSTOP) is
    marked down by the pings; while it is down its conversations go to the
    other worker, and it comes back when it answers again."""
    pool = make_pool({n: tiny_model_path for n in NAMES}, gateways=[["--ping-interval", "0.5", "--ping-timeout", "3"]])
    frozen, _ = pool.workers["w0"]
    conv = conversations_homed_on("w0", 1, "frozen")[0]
    r = chat(pool.url(), "hi", conversation=conv)
    assert r.status_code == 200 and r.headers["x-worker-id"] == "w0", r.text
    frozen.popen.send_signal(signal.SIGSTOP)
    try:
        pool.wait_ready({"w1"}, timeout=60)
        r = chat(pool.url(), "hi", conversation=conv)
        assert r.status_code == 200 and r.headers["x-worker-id"] == "w1", r.text
    finally:
        frozen.popen.send_signal(signal.SIGCONT)
    pool.wait_ready({"w0", "w1"}, timeout=60)
    deadline = time.monotonic() + 30
    while True:
        r = chat(pool.url(), "hi", conversation=conv)
        assert r.status_code == 200, r.text
        if r.headers["x-worker-id"] == "w0":
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
