"""Conversation ids as named handles into the shared prefix tree.

The KV itself lives in the tree (``radix.py``), keyed by token content and
shared with every request. A conversation remembers what it last committed
— the tokens (prompt *and* reply), the token offset at the end of each
message, each message's hash — and pins that entry in the tree so it is
evicted only after every unnamed one. For models whose cache cannot be cut
(``snapshots``), it also pins the checkpoints just above its entry: the
next turn resumes from them when the template re-renders the last reply.

Bounded by: conversations (least recently used handle dropped), idle TTL
(the handle is dropped and its pins released), tokens per entry (enforced
by the manager). Dropping a handle never frees memory by itself: the tree
evicts its entries when the budget needs the room.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import DEFAULTS, GIB
from .radix import Node, PrefixTree


@dataclass
class ConversationLimits:
    max_tokens: int = DEFAULTS.conversation_kv_max_tokens  # per stored entry (clamped to the context length by the worker)
    max_conversations: int = DEFAULTS.conversation_max_convs  # named handles kept
    ttl_seconds: float = DEFAULTS.conversation_ttl_seconds  # idle time before a handle and its unpinned KV are dropped
    max_bytes: int = int(DEFAULTS.conversation_max_gb * GIB)  # the whole prompt cache (all entries, named or not)
    snapshots: int = DEFAULTS.conversation_snapshots  # checkpoints pinned above a conversation's entry (caches that cannot be cut)


@dataclass
class Conversation:
    tokens: list[int]  # what its entry holds: the last prompt and the reply
    boundaries: list[int]  # token offset at the end of each message
    hashes: list[str]  # one per message, same order
    node: Node | None = None  # its entry in the tree (detached once evicted)
    pinned: list[Node] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def in_memory(self) -> bool:
        return self.node is not None and self.node.attached

    @property
    def nbytes(self) -> int:
        """Bytes of its entry's whole path (prefixes shared with other entries included)."""
        total, n = 0, self.node
        while n is not None and n.attached and n.parent is not None:
            total += n.nbytes
            n = n.parent
        return total


class ConversationStore:
    def __init__(self, limits: ConversationLimits, tree: PrefixTree, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.tree = tree
        self.clock = clock
        self._convs: OrderedDict[str, Conversation] = OrderedDict()
        self.dropped = 0  # handles dropped for the count limit or their age

    def __contains__(self, conv_id: str) -> bool:
        return conv_id in self._convs

    def __len__(self) -> int:
        return len(self._convs)

    def get(self, conv_id: str) -> Conversation | None:
        return self._convs.get(conv_id)

    def items(self) -> list[tuple[str, Conversation]]:
        return list(self._convs.items())

    @property
    def tokens(self) -> int:
        return sum(len(c.tokens) for c in self._convs.values())

    def touch(self, conv_id: str) -> None:
        if conv_id in self._convs:
            self._convs.move_to_end(conv_id)
            self._convs[conv_id].last_used = self.clock()

    def commit(self, conv_id: str, tokens: list[int], node: Node, boundaries: list[int], hashes: list[str]) -> Conversation:
        """Point the handle at ``node`` (already pinned once for it by the
        tree's ``insert(pin=True)``), releasing what it pinned before."""
        pinned = [node] + self.tree.checkpoints_above(node, self.limits.snapshots) if self.tree.needs_checkpoints else [node]
        for n in pinned[1:]:
            self.tree.pin(n)
        old = self._convs.pop(conv_id, None)
        if old is not None:
            self._release(old)
        conv = Conversation(tokens, boundaries, hashes, node, pinned, self.clock())
        self._convs[conv_id] = conv
        self._enforce_count()
        return conv

    def drop(self, conv_id: str) -> Conversation | None:
        conv = self._convs.pop(conv_id, None)
        if conv is not None:
            self._release(conv)
        return conv

    def expire(self) -> None:
        cutoff = self.clock() - self.limits.ttl_seconds
        for cid in [c for c, v in self._convs.items() if v.last_used < cutoff]:
            self.drop(cid)
            self.dropped += 1

    def _release(self, conv: Conversation) -> None:
        for n in conv.pinned:
            self.tree.unpin(n)
        conv.pinned = []

    def _enforce_count(self) -> None:
        while len(self._convs) > self.limits.max_conversations:
            cid = next(iter(self._convs))
            self.drop(cid)
            self.dropped += 1
