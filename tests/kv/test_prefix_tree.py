"""The radix prefix tree with real (small) MLX caches: sharing, exact
contents, checkpoints for caches that cannot be cut, eviction order."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import ArraysCache, KVCache

from worker.kv.radix import PrefixTree, shared_length
from worker.kv.segments import Codec

HEADS, DIM = 2, 32


def row_values(tokens: list[int]) -> mx.array:
    """Per-token rows that depend on the token *and* its position, like real KV."""
    t = mx.array(tokens, dtype=mx.float32).reshape(1, 1, -1, 1)
    pos = mx.arange(len(tokens), dtype=mx.float32).reshape(1, 1, -1, 1)
    return mx.broadcast_to(t * 1000 + pos, (1, HEADS, len(tokens), DIM))


def kv_cache(tokens: list[int], layers: int = 2) -> list[KVCache]:
    out = []
    for i in range(layers):
        c = KVCache()
        x = row_values(tokens) + i
        c.update_and_fetch(x, -x)
        out.append(c)
    return out


def hybrid_cache(tokens: list[int]) -> list:
    """One attention layer and one 'SSM' layer whose state summarises every token."""
    ssm = ArraysCache(1)
    ssm[0] = mx.array([[float(sum(tokens)), float(len(tokens))]])
    return [kv_cache(tokens, layers=1)[0], ssm]


def rows(cache, layer: int = 0) -> list[float]:
    c = cache[layer]
    return c.keys[0, 0, : c.offset, 0].tolist()


def tree(max_bytes: int = 1 << 30, **kw) -> PrefixTree:
    now = [0.0]

    def clock() -> float:
        now[0] += 1
        return now[0]

    return PrefixTree(max_bytes=max_bytes, clock=clock, **kw)


def test_shared_length():
    assert shared_length([1, 2, 3, 4], [9, 1, 2, 7], 1, 10) == 2
    assert shared_length([1, 2, 3], [1, 2, 3, 4], 0, 10) == 3
    assert shared_length([1, 2, 3], [1, 2, 3], 0, 2) == 2
    assert shared_length(list(range(1000)), list(range(700)) + [-1] * 10, 0, 2000) == 700
    assert shared_length([5], [1], 0, 1) == 0


def test_longest_prefix_is_rebuilt_exactly():
    t = tree()
    a = [1, 2, 3, 4, 5, 6]
    t.insert(a, kv_cache(a))
    m = t.lookup([1, 2, 3, 9, 9], limit=4)
    assert (m.matched, m.usable) == (3, 3)
    cache = t.cache_for(m)
    assert rows(cache) == rows(kv_cache([1, 2, 3]))
    assert rows(cache, 1) == rows(kv_cache([1, 2, 3]), 1)
    assert t.lookup([7, 8], limit=1).usable == 0


def test_the_limit_leaves_the_last_token_to_prefill():
    t = tree()
    t.insert([1, 2, 3], kv_cache([1, 2, 3]))
    assert t.lookup([1, 2, 3], limit=2).usable == 2


def test_a_shared_prefix_is_stored_once():
    t = tree()
    system = list(range(100, 200))
    chats = [system + [i, i + 1, i + 2] for i in range(0, 30, 3)]
    for c in chats:
        t.insert(c, kv_cache(c))
    one_token = kv_cache([1]).__iter__().__next__().keys[..., :1, :].nbytes * 2 * 2  # keys + values, 2 layers
    assert t.tokens == 100 + 3 * len(chats)
    assert t.nbytes == one_token * t.tokens
    for c in chats:  # and each is still exactly itself
        m = t.lookup(c + [0])
        assert m.usable == len(c)
        assert rows(t.cache_for(m)) == rows(kv_cache(c))


def test_an_entry_extending_another_reuses_its_rows():
    t = tree()
    first = [1, 2, 3, 4]
    t.insert(first, kv_cache(first))
    longer = first + [5, 6]
    t.insert(longer, kv_cache(longer))
    assert t.tokens == 6 and t.nodes == 2
    assert rows(t.cache_of(longer)) == rows(kv_cache(longer))


def test_the_stored_arrays_are_never_written_through():
    t = tree()
    a = [1, 2, 3, 4]
    t.insert(a, kv_cache(a))
    cache = t.cache_of(a)
    cache[0].update_and_fetch(mx.zeros((1, HEADS, 2, DIM)), mx.zeros((1, HEADS, 2, DIM)))
    cache[0].keys[..., 0, :] = 12345.0
    assert rows(t.cache_of(a)) == rows(kv_cache(a))


def test_quantized_storage_round_trips_closely_and_is_smaller():
    plain, quant = tree(), tree(codec=Codec(bits=8, group_size=DIM))
    a = list(range(1, 65))
    cache = []
    for _ in range(2):
        c = KVCache()
        x = mx.random.normal((1, HEADS, len(a), DIM), key=mx.random.key(0))
        c.update_and_fetch(x, x * 2)
        cache.append(c)
    plain.insert(a, cache)
    quant.insert(a, cache)
    assert quant.nbytes < plain.nbytes / 2
    got = quant.cache_of(a)
    assert got[0].keys.dtype == mx.float32
    assert mx.max(mx.abs(got[0].keys - cache[0].keys[..., : len(a), :])).item() < 0.05


def test_a_state_layer_is_only_restored_at_a_checkpoint():
    t = tree()
    turn = [1, 2, 3, 4, 5, 6]
    t.insert(turn[:3], hybrid_cache(turn[:3]))  # the checkpoint taken during prefill
    t.insert(turn, hybrid_cache(turn))  # the finished turn
    m = t.lookup([1, 2, 3, 4, 9, 9])  # diverges inside the second edge
    assert (m.matched, m.usable) == (4, 3)
    cache = t.cache_for(m)
    assert rows(cache) == rows(kv_cache([1, 2, 3], layers=1))
    assert cache[1][0].tolist() == [[6.0, 3.0]]  # the state after exactly three tokens
    exact = t.lookup(turn + [7])
    assert exact.usable == 6 and t.cache_for(exact)[1][0].tolist() == [[21.0, 6.0]]
    assert t.lookup([1, 2, 9]).usable == 0  # no checkpoint at or before two tokens


def test_eviction_takes_unpinned_least_recent_leaves_first():
    one = tree().insert([1], kv_cache([1]))
    per_token = one.segment.nbytes
    t = tree(max_bytes=per_token * 13)
    shared = [50, 51]
    a, b, c = shared + [1, 1, 1], shared + [2, 2, 2], shared + [3, 3, 3]
    pinned = t.insert(a, kv_cache(a))
    t.pin(pinned)
    t.insert(b, kv_cache(b))
    t.insert(c, kv_cache(c))
    t.lookup(b)  # b is now more recent than c
    assert t.nbytes == 11 * per_token
    d = shared + [4, 4, 4]
    t.insert(d, kv_cache(d))  # over budget: c goes (unpinned, least recent)
    assert t.lookup(c).usable == 2
    assert {t.lookup(x).usable for x in (a, b, d)} == {5}
    assert t.stats.evictions == 1 and t.nbytes <= t.max_bytes
    e = shared + [5, 5, 5, 5, 5, 5, 5, 5]
    t.insert(e, kv_cache(e))  # needs 8 more rows: b and d go, the pinned a stays
    assert t.lookup(a).usable == 5 and t.lookup(e).usable == 10
    assert t.lookup(b).usable == 2 and t.lookup(d).usable == 2


def test_a_pinned_entry_goes_last_when_nothing_else_is_left():
    per_token = tree().insert([1], kv_cache([1])).segment.nbytes
    t = tree(max_bytes=per_token * 4)
    a, b, c = [1, 2, 3], [7, 8, 9], [4, 5, 6]
    t.insert(a, kv_cache(a), pin=True)
    t.insert(b, kv_cache(b))  # unpinned, though newer: it goes
    assert t.lookup(a).usable == 3 and t.lookup(b).usable == 0
    t.insert(c, kv_cache(c), pin=True)  # two pinned entries over budget: the older goes
    assert t.lookup(a).usable == 0 and t.lookup(c).usable == 3


def test_inner_checkpoints_go_before_pinned_leaves():
    t = tree(max_bytes=1 << 30)
    p = [1, 2, 3]
    t.insert(p, hybrid_cache(p))
    leaf = t.insert(p + [4, 5], hybrid_cache(p + [4, 5]))
    t.pin(leaf)
    t.max_bytes = t.nbytes - 1
    t.enforce_budget()
    assert t.lookup(p + [9]).usable == 0  # the inner checkpoint went
    assert t.lookup(p + [4, 5, 6]).usable == 5


def test_expire_and_drop_path():
    t = tree()
    a, b = [1, 2, 3, 4], [1, 2, 7, 8]
    na = t.insert(a, kv_cache(a))
    t.insert(b, kv_cache(b))
    t.pin(na)
    t.expire(older_than=float("inf"))
    assert t.lookup(b).usable == 2 and t.lookup(a).usable == 4  # b's own rows went; a is pinned
    t.unpin(na)
    assert t.drop_path(na) > 0
    assert t.tokens == 0 and t.nbytes == 0 and t.nodes == 0


def test_insert_refuses_a_cache_of_another_layout():
    t = tree()
    t.insert([1, 2], kv_cache([1, 2]))
    assert t.insert([1, 2], hybrid_cache([1, 2])) is None


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_segments_split_and_join(bits):
    t = tree(codec=Codec(bits=bits, group_size=DIM))
    a, b = [1, 2, 3, 4, 5, 6], [1, 2, 3, 9]
    t.insert(a, kv_cache(a))
    t.insert(b, kv_cache(b))  # splits a's quantized edge after three tokens
    got = t.cache_of(a)
    want = kv_cache(a)
    assert got[0].offset == 6
    assert mx.allclose(got[0].keys, want[0].keys[..., :6, :], rtol=0.02, atol=2.0).item()


def test_a_leaf_left_without_a_checkpoint_goes_with_its_child():
    t = tree()
    p = [1, 2, 3]
    t.insert(p + [4, 5], hybrid_cache(p + [4, 5]))
    t.insert(p + [6, 7], hybrid_cache(p + [6, 7]))  # splits: an inner node [1, 2, 3] with no checkpoint
    assert t.nodes == 3
    t.max_bytes = t.nbytes - 1
    t.enforce_budget()  # one leaf goes; the other keeps the inner node
    assert t.nodes == 2
    t.max_bytes = 1
    t.enforce_budget()
    assert t.nodes == 0 and t.nbytes == 0 and t.tokens == 0
