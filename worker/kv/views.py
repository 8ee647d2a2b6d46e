"""Small facts about per-sequence KV caches (lists of per-layer caches)."""

from __future__ import annotations

from typing import Any

from mlx_lm.models.cache import can_trim_prompt_cache

Cache = list[Any]


def cache_length(cache: Cache) -> int | None:
    """Tokens the cache holds, from its first layer that counts them (None
    for a cache with no such layer, e.g. only SSM state)."""
    for c in cache:
        offset = getattr(c, "offset", None)
        if isinstance(offset, int) and not isinstance(offset, bool):
            return offset
    return None


def cache_nbytes(cache: Cache) -> int:
    return sum(getattr(c, "nbytes", 0) for c in cache)


def is_trimmable(cache: Cache) -> bool:
    """Rotating windows and recurrent (SSM) layers cannot be rolled back."""
    return bool(cache) and can_trim_prompt_cache(cache)
