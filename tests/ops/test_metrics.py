"""`/metrics` after real requests: histograms and counters match the usage
the clients were told (real gateway + worker, tiny model)."""

from __future__ import annotations

import json
import time

import httpx

from tests.support.metrics import scrape, total


def test_metrics_match_the_requests_usage(make_stack, tiny_model_path):
    stack = make_stack(tiny_model_path)
    usages = []
    for i in range(3):
        body = {"messages": [{"role": "user", "content": f"Count to {i}"}], "max_tokens": 4 + i, "ignore_eos": True, "temperature": 0.0}
        r = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        usages.append(r.json()["usage"])
    body = {"messages": [{"role": "user", "content": "Stream please"}], "max_tokens": 6, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: {")]
    usages.append(json.loads(lines[-1][6:])["usage"])
    # A prompt longer than the context: refused by the worker at admission.
    ctx = httpx.get(f"{stack.root_url}/health", timeout=5).json()["workers"][0].get("context_length", 8192)
    r = httpx.post(f"{stack.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "hi " * (ctx + 10)}]}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"

    # A stream's bookkeeping runs just after its last byte: wait for it to land.
    deadline = time.monotonic() + 15
    while True:
        m = scrape(stack.root_url)
        if total(m, "kmlx:time_to_first_token_seconds_count") >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    assert total(m, "kmlx:time_to_first_token_seconds_count") == 4
    assert total(m, "kmlx:time_to_first_token_seconds_sum") > 0
    assert total(m, "kmlx:time_per_output_token_seconds_count") == 4
    assert total(m, "kmlx:e2e_request_latency_seconds_count") == 4
    assert total(m, "kmlx:request_queue_time_seconds_count") == 4
    assert total(m, "kmlx:prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert total(m, "kmlx:generation_tokens_total") == sum(u["completion_tokens"] for u in usages) == 4 + 5 + 6 + 6
    assert total(m, "kmlx:prompt_tokens_cached_total") == sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert total(m, "kmlx:request_success_total", finished_reason="length") == 4
    assert total(m, "kmlx:admission_rejections_total", reason="context_length_exceeded") == 1
    # Per-worker gauges, from the worker's load reports.
    assert total(m, "kmlx:worker_up", worker="worker") == 1
    assert ("kmlx:num_requests_running", frozenset({("worker", "worker"), ("model_name", _model(stack))})) in m
    assert total(m, "kmlx:num_requests_waiting") == 0
    # The worker's prompt cache: its own counters agree with what the requests were told.
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    hits = sum(1 for u in usages if u["prompt_tokens_details"]["cached_tokens"])
    assert total(m, "kmlx:prefix_cache_hits_total") == cached > 0  # the four prompts share the chat template's opening
    assert total(m, "kmlx:prefix_cache_queries_total") == sum(u["prompt_tokens"] for u in usages)
    assert total(m, "kmlx:prompt_cache_requests_total") == 4 and total(m, "kmlx:prompt_cache_request_hits_total") == hits
    assert total(m, "kmlx:prompt_cache_hit_rate") == hits / 4
    assert 0 < total(m, "kmlx:prompt_cache_bytes") <= total(m, "kmlx:prompt_cache_budget_bytes")
    assert total(m, "kmlx:prompt_cache_evictions_total") == 0
    stats = httpx.get(f"{stack.base_url}/stats", timeout=10).json()["total"]["kv_cache"]
    assert stats["cached_tokens_served"] == cached and stats["hit_rate"] == round(hits / 4, 4)


def _model(stack) -> str:
    return httpx.get(f"{stack.root_url}/v1/models", timeout=5).json()["data"][0]["id"]
