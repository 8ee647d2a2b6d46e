"""Bounded queues, deadlines and keep-alives with real processes."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.pool.support import StreamResult, stream

FLOOD = 16
TOKENS = 24


def flood(root: str) -> list[StreamResult]:
    results: list[StreamResult] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        r = stream(
            root, f"flood {i}", max_tokens=TOKENS, ignore_eos=True, reset_conversation=True, stream_options={"include_usage": True}
        )
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(FLOOD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def check_flood(results: list[StreamResult], message: str) -> None:
    admitted = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status != 200]
    assert len(results) == FLOOD
    assert refused, "the flood exceeded the queue limits"
    for r in refused:
        assert r.status == 503 and r.headers.get("retry-after"), (r.status, r.error_body)
        assert r.error_body and r.error_body["error"]["code"] == "queue_full"
        assert message in r.error_body["error"]["message"]
    assert admitted
    for r in admitted:  # every admitted request completes in full
        assert r.error is None and r.done and r.finish_reason == "length", r.events[-1:]
        assert r.events[-1]["usage"]["completion_tokens"] == TOKENS


def test_flood_beyond_the_queue_limits_gets_503_and_admitted_requests_complete(make_pool, tiny_model_path: Path):
    # One small worker; gateway 0 enforces the worker's limits itself (it
    # learns them from the handshake), gateway 1 is told to queue almost
    # without bound, so only the worker's own refusal protects it.
    pool = make_pool(
        {"w0": tiny_model_path},
        worker_args=["--max-running", "2", "--max-queued", "2"],
        gateways=[[], ["--max-queued-requests", "1000", "--max-queued-tokens", "0"]],
    )
    check_flood(flood(pool.url(0)), "at its queue limit")  # refused by the gateway, before any work
    check_flood(flood(pool.url(1)), "worker queue is full")  # refused by the worker
    stats = httpx.get(f"{pool.url(0)}/v1/stats", timeout=10).json()["total"]
    assert stats["rejected"] > 0 and stats["running"] == 0 and stats["waiting"] == 0


def test_keep_alive_comments_flow_during_a_long_prefill_and_deadlines_end_streams(make_pool, tiny_model_path: Path):
    pool = make_pool(
        {"w0": tiny_model_path},
        worker_args=["--prefill-chunk", "16"],
        gateways=[["--keep-alive", "0.05", "--request-timeout", "30"], ["--request-timeout", "2"]],
    )
    long_prompt = " ".join(f"word{i}" for i in range(1500))  # a few thousand tokens, prefilled 16 at a time
    r = stream(pool.url(0), long_prompt, max_tokens=3, reset_conversation=True)
    assert r.status == 200 and r.error is None and r.done
    assert r.comments > 0, "no keep-alive comment before the first token"
    # A request still generating at its deadline ends with a clean timeout error.
    r = stream(pool.url(1), "Go on and on", max_tokens=6000, ignore_eos=True, reset_conversation=True)
    assert r.status == 200 and r.done
    assert r.error is not None and r.error["code"] == "deadline_exceeded" and r.error["type"] == "timeout_error"
