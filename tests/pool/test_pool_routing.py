"""Routing across a real pool: three workers of one model, one of another,
two gateway processes that share nothing (tiny models, loopback)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.pool.conftest import SECOND_MODEL
from tests.pool.support import Pool, chat, start_pool
from tests.support.e2e import starts_processes

MAIN = ("w0", "w1", "w2")


@pytest.fixture(scope="module")
@starts_processes
def pool(tiny_model_path: Path, second_model_path: Path, log_dir: Path) -> Iterator[Pool]:
    workers = {name: tiny_model_path for name in MAIN} | {"wb": second_model_path}
    p = start_pool(workers, log_dir, gateways=[[], []])
    yield p
    p.stop()


def test_a_conversation_stays_on_one_worker_whichever_gateway_gets_each_turn(pool: Pool):
    for n in range(4):
        conv = f"affinity-{n}"
        history: list[dict] = []
        seen = []
        for turn in range(4):
            gateway = turn % 2  # alternate the two gateways
            r = chat(pool.url(gateway), f"turn {turn}", history=history, conversation=conv, max_tokens=3)
            assert r.status_code == 200, r.text
            seen.append((r.headers["x-worker-id"], r.headers["x-conv-kv"], int(r.headers["x-conv-cached-tokens"])))
            history += [{"role": "user", "content": f"turn {turn}"}, {"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]}]
        assert len({w for w, _, _ in seen}) == 1, seen
        assert seen[0][0] in MAIN
        if seen[0][1] != "disabled":  # conversation cache on: later turns reuse the worker's KV
            assert all(mode == "hit" and cached > 0 for _, mode, cached in seen[1:]), seen


def test_new_conversations_spread_over_the_workers(pool: Pool):
    placed = Counter(chat(pool.url(n % 2), "hello", conversation=f"spread-{n}").headers["x-worker-id"] for n in range(15))
    assert set(placed) == set(MAIN), placed


def test_requests_without_a_conversation_go_to_the_least_loaded_worker(pool: Pool):
    # reset_conversation: no KV to find, so no affinity; an idle pool rotates.
    placed = Counter(chat(pool.url(), "hello", reset_conversation=True).headers["x-worker-id"] for _ in range(6))
    assert set(placed) == set(MAIN), placed


def test_the_second_model_is_routed_by_model(pool: Pool):
    models = {m["id"] for m in httpx.get(f"{pool.url()}/v1/models", timeout=5).json()["data"]}
    main_model = (models - {SECOND_MODEL}).pop()
    assert models == {main_model, SECOND_MODEL}
    for g in (0, 1):
        r = chat(pool.url(g), "hi", model=SECOND_MODEL, conversation="two-models")
        assert r.status_code == 200 and r.headers["x-worker-id"] == "wb"
        assert r.json()["model"] == SECOND_MODEL
        r = chat(pool.url(g), "hi", model=main_model, conversation="two-models")
        assert r.status_code == 200 and r.headers["x-worker-id"] in MAIN
        assert r.json()["model"] == main_model


def test_stats_add_up_over_the_pool(pool: Pool):
    chat(pool.url(), "count me", conversation="stats")
    stats = httpx.get(f"{pool.url(1)}/v1/stats", timeout=10).json()
    assert len(stats["workers"]) == 4 and all(w["ready"] for w in stats["workers"])
    assert stats["total"]["workers"] == 4
    assert stats["total"]["admitted"] == sum(w["admitted"] for w in stats["workers"]) > 0
    assert set(stats["models"]) == {w["model"] for w in stats["workers"]}
    assert stats["models"][SECOND_MODEL]["workers"] == 1


def test_health_reports_every_worker_with_its_load(pool: Pool):
    h = pool.health(1)
    assert h["status"] == "ok"
    assert {w["worker_id"] for w in h["workers"]} == {*MAIN, "wb"}
    assert all(w["queue_full"] is None and w["load"] >= 0 for w in h["workers"])


def test_conversation_endpoints_reach_the_worker_that_holds_the_conversation(pool: Pool):
    r = chat(pool.url(0), "remember me", conversation="kept")
    home = r.headers["x-worker-id"]
    stats = httpx.get(f"{pool.url(1)}/v1/conv_kv/stats", timeout=10).json()
    assert {m["worker"] for m in stats["in_memory"] if m["id"] == "kept"} == {home}
    # Saved through the other gateway: it finds the same worker.
    r = httpx.post(f"{pool.url(1)}/v1/conv_kv/save", json={"conversation": "kept"}, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "saved", r.text
    saved = httpx.get(f"{pool.url(0)}/v1/conv_kv/stats", timeout=10).json()["items"]
    assert {i["worker"] for i in saved if i["id"] == "kept"} == {home}
    r = httpx.delete(f"{pool.url(0)}/v1/conv_kv/kept", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "deleted"
    r = httpx.post(f"{pool.url(1)}/v1/conv_kv/save", json={"conversation": "kept"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "conversation_not_found"
