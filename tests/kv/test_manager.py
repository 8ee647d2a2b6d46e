"""PromptCacheManager with small real MLX caches: the X-Conv-KV decision,
what a finish stores, handles, pins, limits and the control calls."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache

from protocol.messages import ChatRequest, SamplingParams
from worker.kv.conversations import ConversationLimits
from worker.kv.manager import ControlError, KVConfig, PromptCacheManager

HEADS, DIM = 2, 32
PER_TOKEN = 2 * 2 * HEADS * DIM * 4  # keys + values, two layers, float32


def kv(tokens: list[int]) -> list[KVCache]:
    out = []
    for layer in range(2):
        c = KVCache()
        x = mx.broadcast_to(mx.array(tokens, dtype=mx.float32).reshape(1, 1, -1, 1) + layer, (1, HEADS, len(tokens), DIM))
        c.update_and_fetch(x, -x)
        out.append(c)
    return out


def manager(tmp_path: Path, **limits) -> PromptCacheManager:
    cfg = KVConfig(prefix_enabled=False, disk_dir=tmp_path / "conv", prefix_dir=tmp_path / "prefix", limits=ConversationLimits(**limits))
    return PromptCacheManager(cfg, model_id="m", tokenizer_hash="t")


def req(conv: str | None = None, **kw) -> ChatRequest:
    return ChatRequest(request_id="r", messages=[], sampling=SamplingParams(), conversation_id=conv, **kw)


def turn(m: PromptCacheManager, prompt: list[int], reply: list[int], conv: str | None = None):
    plan = m.plan(req(conv), prompt, 0)
    m.finish(plan, prompt + reply, kv(prompt + reply), hashes=[], boundaries=[])
    return plan


def test_modes(tmp_path):
    m = manager(tmp_path)
    assert turn(m, [1, 2, 3], [4]).decision.mode == "none"  # no id, nothing cached
    assert turn(m, [1, 2, 3, 4, 5], [6]).decision.mode == "hit"  # no id, found
    first = turn(m, [1, 2, 9], [9], conv="c")
    assert (first.decision.mode, first.decision.cached_tokens) == ("fresh", 2)  # new id, shared prefix still served
    assert m.plan(req("c"), [1, 2, 9, 9, 7], 0).decision.mode == "hit"
    assert m.plan(req("c"), [50, 51], 0).decision.mode == "reset"
    off = m.plan(req("c", reset_conversation=True), [1, 2, 9, 9, 7], 0)
    assert (off.decision.mode, off.cache, off.commit) == ("disabled", None, False)


def test_only_a_normal_finish_is_stored(tmp_path):
    m = manager(tmp_path)
    plan = m.plan(req("c"), [1, 2, 3], 0)
    m.finish(plan, None, None, hashes=[], boundaries=[])  # aborted
    assert m.store.get("c") is None and m.tree.tokens == 0
    m.finish(plan, [1, 2, 3, 4], kv([1, 2, 3]), hashes=[], boundaries=[])  # a cache that does not hold its tokens
    assert m.tree.tokens == 0
    off = m.plan(req("c", reset_conversation=True), [1, 2, 3], 0)
    m.finish(off, [1, 2, 3, 4], kv([1, 2, 3, 4]), hashes=[], boundaries=[])
    assert m.tree.tokens == 0


def test_parallel_turns_of_one_conversation_both_reuse_and_both_store(tmp_path):
    m = manager(tmp_path)
    turn(m, [1, 2, 3], [4], conv="c")
    a, b = m.plan(req("c"), [1, 2, 3, 4, 10], 0), m.plan(req("c"), [1, 2, 3, 4, 20], 0)
    assert a.decision.cached_tokens == b.decision.cached_tokens == 4
    m.finish(a, [1, 2, 3, 4, 10, 11], kv([1, 2, 3, 4, 10, 11]), hashes=[], boundaries=[])
    m.finish(b, [1, 2, 3, 4, 20, 21], kv([1, 2, 3, 4, 20, 21]), hashes=[], boundaries=[])
    assert m.store.get("c").tokens == [1, 2, 3, 4, 20, 21]  # the last to finish
    assert m.reusable([1, 2, 3, 4, 10, 11, 0]) == 6  # and the other is cached as well


def test_named_conversations_are_evicted_after_unnamed_entries(tmp_path):
    m = manager(tmp_path, max_bytes=PER_TOKEN * 12)
    turn(m, [1, 2, 3, 4], [5], conv="named")
    turn(m, [20, 21, 22, 23], [24])
    turn(m, [30, 31, 32, 33], [34])  # over budget: the older unnamed entry goes, not the named one
    assert m.reusable([1, 2, 3, 4, 5, 0]) == 5
    assert m.reusable([20, 21, 22, 23, 24, 0]) == 0
    assert m.summary()["evictions"] == 1


def test_the_conversation_limit_unpins_the_least_recent_handle(tmp_path):
    m = manager(tmp_path, max_conversations=1)
    turn(m, [1, 2], [3], conv="a")
    turn(m, [7, 8], [9], conv="b")
    assert m.store.get("a") is None and m.store.get("b") is not None
    assert m.reusable([1, 2, 3, 0]) == 3  # its KV stays, unpinned, until the budget needs the room


def test_a_turn_longer_than_the_cap_is_cut_to_it(tmp_path):
    m = manager(tmp_path, max_tokens=4)
    turn(m, [1, 2, 3, 4, 5], [6], conv="c")
    assert m.store.get("c").tokens == [1, 2, 3, 4]
    assert m.reusable([1, 2, 3, 4, 5, 6]) == 4


def test_save_load_delete(tmp_path):
    m = manager(tmp_path)
    turn(m, [1, 2, 3], [4], conv="c")
    turn(m, [1, 2, 7], [8])  # shares [1, 2] with the conversation
    saved = m.save({"conversation_id": "c", "title": "t"})
    assert (saved["status"], saved["tokens"]) == ("saved", 4)

    fresh = manager(tmp_path)  # a restarted worker
    assert fresh.load({"conversation_id": "c"}) == {"status": "loaded", "id": "c", "tokens": 4}
    assert fresh.reusable([1, 2, 3, 4, 0]) == 4
    assert [i["id"] for i in fresh.stats({})["in_memory"]] == ["c"]

    assert m.delete({"conversation_id": "c"})["status"] == "deleted"
    assert m.reusable([1, 2, 3, 4, 0]) == 2  # its own KV went; the prefix another entry shares stayed
    assert m.delete({"conversation_id": "c"})["status"] == "not_found"
    with pytest.raises(ControlError) as err:
        m.save({"conversation_id": "c"})
    assert err.value.status == 404


def test_a_conversation_evicted_from_memory_cannot_be_saved(tmp_path):
    m = manager(tmp_path, max_bytes=PER_TOKEN * 5)
    turn(m, [1, 2, 3], [4], conv="a")
    turn(m, [7, 8, 9], [10], conv="b")  # two pinned entries over budget: the older goes
    with pytest.raises(ControlError) as err:
        m.save({"conversation_id": "a"})
    assert err.value.status == 404
    assert m.save({"conversation_id": "b"})["tokens"] == 4


def test_summary_counts(tmp_path):
    m = manager(tmp_path)
    turn(m, [1, 2, 3], [4])
    turn(m, [1, 2, 3, 4, 5], [6])
    s = m.summary()
    assert (s["requests"], s["hits"], s["hit_rate"], s["cached_tokens_served"]) == (2, 1, 0.5, 4)
    assert s["prompt_tokens_queried"] == 8 and s["cache_tokens"] == 6 and s["cache_bytes"] == 6 * PER_TOKEN
