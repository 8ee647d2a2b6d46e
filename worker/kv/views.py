"""Small operations on per-sequence KV caches (lists of per-layer caches).

The stored caches are never mutated: a reuse takes a *view* (new cache
objects that share the immutable arrays, with a shorter offset). mlx-lm's
batch merge only reads ``keys[..., :offset]``, so a view costs nothing.
"""

from __future__ import annotations

import copy
from typing import Any

from mlx_lm.models.cache import KVCache, can_trim_prompt_cache

Cache = list[Any]


def cache_length(cache: Cache) -> int:
    return cache[0].offset if cache and hasattr(cache[0], "offset") else 0


def cache_nbytes(cache: Cache) -> int:
    return sum(getattr(c, "nbytes", 0) for c in cache)


def is_trimmable(cache: Cache) -> bool:
    """Rotating windows and recurrent (SSM) layers cannot be rolled back."""
    return bool(cache) and can_trim_prompt_cache(cache)


def prefix_view(cache: Cache, n: int) -> Cache | None:
    """A cache holding the first ``n`` tokens of ``cache``, or None if that
    state cannot be recovered (an untrimmable cache asked to roll back)."""
    length = cache_length(cache)
    if n > length:
        return None
    if n == length:
        return [_clone(c) for c in cache]
    if not is_trimmable(cache):
        return None
    if all(type(c) is KVCache for c in cache):
        return [_kv_view(c, n) for c in cache]
    out = copy.deepcopy(cache)
    for c in out:
        c.trim(length - n)
    return out


def _kv_view(c: KVCache, n: int) -> KVCache:
    v = KVCache()
    v.keys, v.values, v.offset = c.keys, c.values, n
    return v


def _clone(c: Any) -> Any:
    if type(c) is KVCache:
        return _kv_view(c, c.offset)
    return copy.deepcopy(c)


def compact(cache: Cache) -> Cache:
    """Drop unused capacity past ``offset`` so stored caches hold only real tokens."""
    out = []
    for c in cache:
        if type(c) is KVCache and c.keys is not None and c.keys.shape[2] != c.offset:
            v = KVCache()
            v.keys = c.keys[..., : c.offset, :]
            v.values = c.values[..., : c.offset, :]
            v.offset = c.offset
            out.append(v)
        else:
            out.append(c)
    return out
