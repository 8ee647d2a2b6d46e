"""Conversation KV bookkeeping with real (small) MLX caches."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache, RotatingKVCache

from worker.kv.conversations import ConversationLimits, ConversationStore, common_prefix
from worker.kv.views import cache_length, prefix_view

LAYERS = 2


def kv(n: int, fill: float = 1.0) -> list[KVCache]:
    """A per-layer cache holding n tokens whose values encode their position."""
    out = []
    for _ in range(LAYERS):
        c = KVCache()
        pos = mx.arange(n, dtype=mx.float32).reshape(1, 1, n, 1) * fill
        c.update_and_fetch(mx.broadcast_to(pos, (1, 2, n, 4)), mx.broadcast_to(pos, (1, 2, n, 4)))
        out.append(c)
    return out


def store(**kw) -> ConversationStore:
    now = [0.0]
    s = ConversationStore(ConversationLimits(**kw), clock=lambda: now[0])
    s.now = now  # type: ignore[attr-defined]
    return s


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def test_fresh_then_hit_extends_whole_record():
    s = store()
    assert s.lookup("c", [1, 2, 3]).mode == "fresh"
    s.commit("c", [1, 2, 3, 9, 9], kv(5), [2], ["h"])
    r = s.lookup("c", [1, 2, 3, 9, 9, 4, 5])
    assert (r.mode, r.cached_tokens) == ("hit", 5)
    assert cache_length(r.cache) == 5


def test_rollback_to_divergence_never_past_it():
    s = store()
    s.commit("c", list(range(10)), kv(10), [], [])
    r = s.lookup("c", [0, 1, 2, 3, 77, 78])
    assert (r.mode, r.cached_tokens) == ("hit", 4)
    assert [int(x) for x in r.cache[0].keys[0, 0, : r.cache[0].offset, 0].tolist()] == [0, 1, 2, 3]


def test_identical_prompt_leaves_last_token_to_prefill():
    s = store()
    s.commit("c", [1, 2, 3], kv(3), [], [])
    r = s.lookup("c", [1, 2, 3])
    assert r.cached_tokens == 2


def test_nothing_shared_is_reset():
    s = store()
    s.commit("c", [1, 2, 3], kv(3), [], [])
    assert s.lookup("c", [5, 6]).mode == "reset"


def test_lookup_never_mutates_the_stored_cache():
    s = store()
    s.commit("c", list(range(8)), kv(8), [], [])
    s.lookup("c", [0, 1, 2, 50])
    assert s.get("c").cache[0].offset == 8


def test_lru_eviction_by_count():
    s = store(max_conversations=2)
    for cid in "abc":
        s.now[0] += 1
        s.commit(cid, [1, 2], kv(2), [], [])
    assert "a" not in s and "b" in s and "c" in s


def test_byte_budget_evicts_oldest():
    one = sum(c.nbytes for c in kv(16))
    s = store(max_bytes=int(one * 2.5))
    for cid in "abc":
        s.commit(cid, list(range(16)), kv(16), [], [])
    assert len(s) == 2 and "a" not in s
    assert s.nbytes <= one * 2.5


def test_ttl_expiry():
    s = store(ttl_seconds=10)
    s.commit("a", [1, 2], kv(2), [], [])
    s.now[0] += 11
    assert s.lookup("a", [1, 2, 3]).mode == "fresh"


def test_busy_conversation_is_not_evicted():
    s = store(max_conversations=1)
    s.commit("a", [1, 2], kv(2), [], [])
    s.get("a").busy = True
    s.commit("b", [1, 2], kv(2), [], [])
    assert "a" in s


def test_per_conversation_token_cap_keeps_a_prefix():
    s = store(max_tokens=4)
    s.commit("a", list(range(10)), kv(10), [3, 9], ["x", "y"])
    conv = s.get("a")
    assert conv.tokens == [0, 1, 2, 3] and cache_length(conv.cache) == 4
    assert conv.boundaries == [3]


def test_mismatched_cache_is_not_stored():
    s = store()
    assert not s.commit("a", [1, 2, 3], kv(2), [], [])
    assert "a" not in s


def test_untrimmable_cache_uses_snapshots_or_resets():
    def rot(n: int) -> list[RotatingKVCache]:
        out = []
        for _ in range(LAYERS):
            c = RotatingKVCache(max_size=4)
            x = mx.zeros((1, 2, n, 4))
            c.update_and_fetch(x, x)
            out.append(c)
        return out

    s = store(snapshots=2)
    s.commit("a", [1, 2, 3], rot(3), [], [])
    s.commit("a", [1, 2, 3, 4, 5, 6], rot(6), [], [])
    # exact extension of the latest state: reusable without trimming
    assert s.lookup("a", [1, 2, 3, 4, 5, 6, 7]).mode == "hit"
    # branch after token 3: the latest state cannot roll back, a snapshot can serve
    r = s.lookup("a", [1, 2, 3, 9, 9])
    assert (r.mode, r.cached_tokens) == ("snapshot", 3)
    assert s.lookup("a", [1, 9]).mode == "reset"


def test_prefix_view_of_untrimmable_is_refused():
    c = [RotatingKVCache(max_size=4) for _ in range(LAYERS)]
    for x in c:
        x.update_and_fetch(mx.zeros((1, 2, 6, 4)), mx.zeros((1, 2, 6, 4)))
    assert prefix_view(c, 3) is None
    assert prefix_view(c, 6) is not None


@pytest.mark.parametrize("n", [0, 1, 5])
def test_prefix_view_lengths(n):
    assert cache_length(prefix_view(kv(5), n)) == n
