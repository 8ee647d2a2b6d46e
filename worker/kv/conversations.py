"""Per-conversation KV caches: lookup by longest common prefix, commit, limits.

A conversation remembers the tokens its cache holds (prompt *and* the
generated reply), the token offset at the end of each message, and each
message's hash. A new request reuses the longest token prefix it shares with
that record: an appended turn reuses everything (including the model's own
last reply when the template re-renders it identically), while an edited or
dropped message rolls back to where the texts diverge — never further, so
nothing stale is ever served.

Bounded by: tokens per conversation, number of conversations (LRU), idle
TTL, and a global byte budget. Pure bookkeeping: no MLX calls beyond the
cache views, so it is unit-testable with small fake caches.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from .views import Cache, cache_length, cache_nbytes, is_trimmable, prefix_view


@dataclass
class ConversationLimits:
    max_tokens: int = 131072  # per conversation (clamped to the context length by the worker)
    max_conversations: int = 64
    ttl_seconds: float = 3600.0
    max_bytes: int = 4 << 30  # all conversations together
    snapshots: int = 1  # earlier states kept for caches that cannot be trimmed


@dataclass
class Snapshot:
    tokens: list[int]
    cache: Cache


@dataclass
class Conversation:
    tokens: list[int]
    cache: Cache
    boundaries: list[int]  # token offset at the end of each message
    hashes: list[str]  # one per message, same order
    snapshots: list[Snapshot] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False  # a request is using it right now

    @property
    def nbytes(self) -> int:
        return cache_nbytes(self.cache) + sum(cache_nbytes(s.cache) for s in self.snapshots)


@dataclass
class Reuse:
    """The outcome of a lookup: what to prefill from and how to report it."""

    mode: str  # fresh | hit | snapshot | reset | disabled
    cached_tokens: int = 0
    cache: Cache | None = None


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ConversationStore:
    def __init__(self, limits: ConversationLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self._convs: OrderedDict[str, Conversation] = OrderedDict()
        self.evictions = 0

    # ------------------------------------------------------------------ #
    def __contains__(self, conv_id: str) -> bool:
        return conv_id in self._convs

    def __len__(self) -> int:
        return len(self._convs)

    def get(self, conv_id: str) -> Conversation | None:
        return self._convs.get(conv_id)

    def items(self) -> list[tuple[str, Conversation]]:
        return list(self._convs.items())

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._convs.values())

    @property
    def tokens(self) -> int:
        return sum(len(c.tokens) for c in self._convs.values())

    # ------------------------------------------------------------------ #
    def lookup(self, conv_id: str, prompt: list[int]) -> Reuse:
        """Find reusable KV for ``prompt``. At least the prompt's last token is
        always left to prefill (the model needs it to produce logits)."""
        self.expire()
        conv = self._convs.get(conv_id)
        if conv is None:
            return Reuse("fresh")
        self._touch(conv_id)
        limit = len(prompt) - 1
        shared = min(common_prefix(conv.tokens, prompt), limit)
        if shared > 0:
            view = prefix_view(conv.cache, shared)
            if view is not None:
                return Reuse("hit", shared, view)
        # The cache cannot roll back that far: try the saved earlier states.
        best: Snapshot | None = None
        for snap in conv.snapshots:
            if len(snap.tokens) <= limit and prompt[: len(snap.tokens)] == snap.tokens:
                if best is None or len(snap.tokens) > len(best.tokens):
                    best = snap
        if best is not None:
            view = prefix_view(best.cache, len(best.tokens))
            if view is not None:
                return Reuse("snapshot", len(best.tokens), view)
        return Reuse("reset")

    def commit(self, conv_id: str, tokens: list[int], cache: Cache, boundaries: list[int], hashes: list[str]) -> bool:
        """Store a finished turn's state. Returns False if it was not kept."""
        cap = self.limits.max_tokens
        if len(tokens) > cap:
            view = prefix_view(cache, cap)
            if view is None:
                self.drop(conv_id)
                return False
            tokens, cache = tokens[:cap], view
            boundaries = [b for b in boundaries if b <= cap]
            hashes = hashes[: len(boundaries)]
        if cache_length(cache) != len(tokens):
            return False  # never store a cache whose tokens we can't vouch for
        old = self._convs.get(conv_id)
        snapshots: list[Snapshot] = []
        if old is not None and self.limits.snapshots > 0 and not is_trimmable(cache):
            # The new state cannot be rolled back: keep the earlier one to branch from.
            snapshots = (old.snapshots + [Snapshot(old.tokens, old.cache)])[-self.limits.snapshots :]
        self._convs[conv_id] = Conversation(tokens, cache, boundaries, hashes, snapshots, self.clock())
        self._touch(conv_id)
        self._enforce_limits(keep=conv_id)
        return conv_id in self._convs

    def put(self, conv_id: str, conv: Conversation) -> None:
        """Insert a conversation loaded from disk."""
        conv.last_used = self.clock()
        self._convs[conv_id] = conv
        self._touch(conv_id)
        self._enforce_limits(keep=conv_id)

    def drop(self, conv_id: str) -> bool:
        return self._convs.pop(conv_id, None) is not None

    def expire(self) -> None:
        now = self.clock()
        for cid in [c for c, v in self._convs.items() if not v.busy and now - v.last_used > self.limits.ttl_seconds]:
            del self._convs[cid]
            self.evictions += 1

    # ------------------------------------------------------------------ #
    def _touch(self, conv_id: str) -> None:
        self._convs.move_to_end(conv_id)
        self._convs[conv_id].last_used = self.clock()

    def _enforce_limits(self, keep: str) -> None:
        def over() -> bool:
            return len(self._convs) > self.limits.max_conversations or self.nbytes > self.limits.max_bytes

        for cid in list(self._convs):
            if not over():
                break
            if cid == keep or self._convs[cid].busy:
                continue
            del self._convs[cid]
            self.evictions += 1
        if over():  # the kept one alone is too big for the budget
            self._convs.pop(keep, None)
            self.evictions += 1
