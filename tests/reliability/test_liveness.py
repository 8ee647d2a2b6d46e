"""A compute loop that stops moving, through real processes: its requests
fail fast, /health says so, it comes back if it can, and SIGTERM (or a
second signal) ends it even when its main thread is stuck in native code.

The hang is injected (worker/failpoints.py): a batch step blocks inside C
with the GIL released, as the worker did in MLX evaluation in issue #17.
The gateway keeps its 120 s ping timeout, so what is seen here within
seconds is the worker's own watchdog.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.reliability.support import BackgroundStream, chat, client

HANG = {"KMLX_FAILPOINTS": "compute_step=hang@40"}
GATEWAY = ["--ping-timeout", "120"]


def health(stack) -> tuple[int, dict]:
    r = client().get(f"{stack.root_url}/health")
    return r.status_code, r.json()


def wait_exit(proc, timeout: float) -> float:
    t0 = time.monotonic()
    try:
        proc.popen.wait(timeout)
    except Exception:  # noqa: BLE001 - reported by the assertion
        proc.popen.kill()
        proc.popen.wait(10)
        pytest.fail(f"{proc.name} still running {timeout:.0f} s after the signal:\n{proc.log()[-3000:]}")
    return time.monotonic() - t0


def test_a_stuck_loop_fails_its_requests_fast_and_sigterm_still_ends_it(make_stack, tiny_model_path):
    stack = make_stack(tiny_model_path, worker_args=["--stall-timeout", "2", "--drain-timeout", "10"],
                       gateway_args=GATEWAY, worker_env=HANG)
    t0 = time.monotonic()
    stream = BackgroundStream(stack, max_tokens=300).start().join(timeout=60)
    failed_after = time.monotonic() - t0
    assert len(stream.errors) == 1, stream.events[-3:]
    err = stream.errors[0]["error"]
    assert err["code"] == "worker_unavailable" and "compute loop stuck" in err["message"]
    status, body = health(stack)
    assert status == 503 and not body["workers"][0]["ready"] and "stuck" in body["workers"][0]["state"]
    r = chat(stack, "Anyone there?")  # nothing is routed to it
    assert r.status_code == 503 and r.json()["error"]["code"] in ("no_worker", "worker_unavailable")

    worker = stack.workers[0]
    worker.popen.send_signal(signal.SIGTERM)  # a stalled loop: no drain, 5 s to return, then out
    took = wait_exit(worker, 30)
    assert worker.popen.returncode == 1
    log = worker.log()
    assert "did not stop within" in log and "failpoints.py" in log  # the stuck thread's stack is in the log
    print(f"stream failed {failed_after:.1f} s after it started (stall timeout 2 s); SIGTERM ended the worker in {took:.1f} s")


def test_a_second_signal_ends_a_worker_stuck_during_its_drain(make_stack, tiny_model_path):
    """The stall is not declared yet (5 min timeout): SIGTERM starts a drain
    that can never finish; a second SIGTERM ends the process anyway."""
    stack = make_stack(tiny_model_path, worker_args=["--stall-timeout", "300", "--drain-timeout", "120"],
                       gateway_args=GATEWAY, worker_env=HANG)
    stream = BackgroundStream(stack, max_tokens=300).start()
    worker = stack.workers[0]
    pid = worker.popen.pid
    deadline = time.monotonic() + 60
    while "fail point compute_step: hang" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "fail point compute_step: hang" in worker.log()
    worker.popen.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert worker.alive(), "the first SIGTERM drains"
    worker.popen.send_signal(signal.SIGTERM)
    took = wait_exit(worker, 30)
    assert worker.popen.returncode == 1, (pid, worker.log()[-2000:])
    stream.join(timeout=60)
    assert stream.errors and stream.errors[0]["error"]["code"] == "worker_unavailable"
    print(f"second SIGTERM ended the stuck worker in {took:.1f} s")


def test_a_loop_that_comes_back_is_readmitted(make_stack, tiny_model_path):
    stack = make_stack(tiny_model_path, worker_args=["--stall-timeout", "2"], gateway_args=GATEWAY,
                       worker_env={"KMLX_FAILPOINTS": "compute_step=sleep:8@40"})
    stream = BackgroundStream(stack, max_tokens=300).start().join(timeout=60)
    assert stream.errors and "compute loop stuck" in stream.errors[0]["error"]["message"]
    assert health(stack)[0] == 503
    deadline = time.monotonic() + 60
    while health(stack)[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    status, body = health(stack)
    assert status == 200 and body["workers"][0]["ready"]
    r = chat(stack, "Back again?", max_tokens=5, ignore_eos=True)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    stats = stack.worker_stats()[0]
    assert stats["running"] == 0 and stats["waiting"] == 0  # the stalled request was failed, not left running
    assert "compute loop moving again" in stack.workers[0].log()
