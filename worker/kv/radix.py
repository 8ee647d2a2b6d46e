"""The worker-wide prompt cache: a radix tree over token ids (as SGLang's
RadixAttention), shared by every request whatever its conversation.

Each edge is a run of tokens; its node stores the KV rows of exactly those
tokens (``Segment``), so a prefix common to many prompts — a system prompt,
tool definitions, an earlier turn — is stored once. A lookup walks the tree
along the prompt, O(prompt length) whatever the number of entries, and
rebuilds a cache for the longest shared prefix by joining the segments on
the path (and cutting the last one anywhere: plain KV rows can end at any
token).

Layers that cannot be cut (sliding windows, SSM state: ``Checkpoint``) are
usable only where a checkpoint was stored: at the end of a finished turn and
at the message boundaries the scheduler stops at during prefill. A lookup on
such a model returns the deepest checkpoint on the shared path.

Memory: one byte budget. When it is exceeded, whole leaves (and checkpoints
of inner nodes) go, least recently used first; nodes pinned by a named
conversation (``pin``) only after every unpinned one. Inner nodes are never
dropped while a longer entry still needs them.

Runs on the compute thread; touches MLX only to copy and join arrays.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import segments as seg
from .segments import Cache, Checkpoint, Codec, Layout, Segment


class Node:
    __slots__ = ("parent", "children", "tokens", "start", "segment", "state", "last_used", "pins", "attached")

    def __init__(self, parent: Node | None, tokens: list[int], start: int, segment: Segment | None):
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.tokens = tokens  # the edge: positions [start, start + len(tokens))
        self.start = start
        self.segment = segment
        self.state: Checkpoint | None = None  # state layers after exactly ``end`` tokens
        self.last_used = 0.0
        self.pins = 0  # named conversations that want this node kept
        self.attached = True

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    @property
    def nbytes(self) -> int:
        return (self.segment.nbytes if self.segment else 0) + (self.state.nbytes if self.state else 0)


@dataclass
class Match:
    """The result of a lookup."""

    matched: int  # tokens of the prompt found in the tree
    usable: int  # tokens a cache can be rebuilt for (== matched unless a checkpoint is needed)
    path: list[Node] = field(default_factory=list)  # the nodes covering [0, usable)
    state: Checkpoint | None = None  # for state layers, taken at ``usable``


@dataclass
class TreeStats:
    lookups: int = 0
    hits: int = 0  # lookups that reused at least one token
    tokens_queried: int = 0
    tokens_hit: int = 0
    inserts: int = 0
    evictions: int = 0  # leaves and checkpoints dropped for the budget or their age
    evicted_bytes: int = 0


def shared_length(edge: list[int], seq: list[int], pos: int, cap: int) -> int:
    """How many leading tokens of ``edge`` equal ``seq[pos:]`` (at most ``cap``).
    Slice comparisons run in C; a mismatch is found by bisection."""
    n = min(len(edge), cap, len(seq) - pos)
    if n <= 0:
        return 0
    if seq[pos : pos + n] == edge[:n]:
        return n
    lo, hi = 0, n  # a prefix of length lo matches; one of length hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if seq[pos : pos + mid] == edge[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class PrefixTree:
    def __init__(self, *, max_bytes: int, codec: Codec | None = None, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.codec = codec or Codec()
        self.clock = clock
        self.root = Node(None, [], 0, None)
        self.layout: Layout | None = None
        self.dtype: Any = None
        self.nbytes = 0
        self.tokens = 0  # tokens stored (each shared prefix once)
        self.nodes = 0
        self.stats = TreeStats()
        self._order = itertools.count()  # heap tie-breaker

    def bind(self, layout: Layout, dtype: Any) -> None:
        """The model's cache layout, known before anything is stored."""
        self.layout, self.dtype = layout, dtype

    @property
    def needs_checkpoints(self) -> bool:
        return self.layout is not None and self.layout.has_state

    # ------------------------------------------------------------------ #
    def lookup(self, prompt: list[int], limit: int | None = None, *, record: bool = True) -> Match:
        """The longest prefix of ``prompt`` (at most ``limit`` tokens) that a
        cache can be rebuilt for. Marks the nodes used as recently used;
        counts the lookup in ``stats`` unless ``record`` is false."""
        match = self._find(prompt, limit)
        if not record:
            return match
        self.stats.lookups += 1
        self.stats.tokens_queried += len(prompt)
        if match.usable:
            self.stats.hits += 1
            self.stats.tokens_hit += match.usable
        return match

    def _find(self, prompt: list[int], limit: int | None = None) -> Match:
        limit = len(prompt) if limit is None else min(limit, len(prompt))
        node, pos = self.root, 0
        path: list[Node] = []
        checkpoint_at = 0  # len(path) at the deepest node with a checkpoint
        while pos < limit:
            child = node.children.get(prompt[pos])
            if child is None:
                break
            m = shared_length(child.tokens, prompt, pos, limit - pos)
            path.append(child)
            pos += m
            if m < len(child.tokens):
                break
            node = child
            if child.state is not None:
                checkpoint_at = len(path)
        match = Match(matched=pos, usable=pos, path=path)
        if self.layout is not None and self.layout.has_state:
            match.path = path[:checkpoint_at]
            match.usable = match.path[-1].end if match.path else 0
            match.state = match.path[-1].state if match.path else None
        now = self.clock()
        for n in match.path:
            n.last_used = now
        return match

    def cache_for(self, match: Match) -> Cache | None:
        """A new cache holding the match's tokens (None for no match)."""
        if match.usable == 0 or self.layout is None:
            return None
        return seg.assemble(self.layout, self.codec, [n.segment for n in match.path if n.segment], match.usable, match.state, self.dtype)

    def cache_of(self, tokens: list[int]) -> Cache | None:
        """A cache holding exactly ``tokens``, if the tree has all of them
        (and a checkpoint at their end where one is needed)."""
        match = self._find(tokens)
        return self.cache_for(match) if tokens and match.usable == len(tokens) else None

    # ------------------------------------------------------------------ #
    def insert(self, tokens: list[int], cache: Cache, *, pin: bool = False) -> Node | None:
        """Store ``cache`` (which holds exactly ``tokens``): only the rows
        past what the tree already has are copied. Returns the node ending
        at ``len(tokens)`` (pinned once more with ``pin``: the caller unpins
        it later), or None if the cache does not fit this tree or the
        budget could not keep it."""
        if not tokens:
            return None
        if self.layout is None:
            self.layout = Layout.of(cache)
            self.dtype = next((c.keys.dtype for c in cache if seg.is_sequence_layer(c)), None)
        if not self.layout.matches(cache):
            return None
        node, pos, n = self.root, 0, len(tokens)
        now = self.clock()
        fresh: list[Segment | Checkpoint | None] = []
        while pos < n:
            child = node.children.get(tokens[pos])
            if child is None:
                break
            m = shared_length(child.tokens, tokens, pos, n - pos)
            if m < len(child.tokens):
                child = self._split(child, m)
            child.last_used = now
            node, pos = child, pos + m
        if pos < n:
            leaf = Node(node, tokens[pos:], pos, seg.cut(cache, self.layout, pos, n, self.codec))
            node.children[tokens[pos]] = leaf
            leaf.last_used = now
            self._account(leaf, +1)
            fresh.append(leaf.segment)
            node = leaf
        if self.layout.has_state and node.state is None:
            node.state = seg.checkpoint(cache, self.layout)
            self.nbytes += node.state.nbytes
            fresh.append(node.state)
        seg.evaluate(*fresh)
        self.stats.inserts += 1
        if pin:
            node.pins += 1
        self.enforce_budget()
        return node if node.attached else None

    def _split(self, child: Node, at: int) -> Node:
        """Cut ``child``'s edge after ``at`` tokens; returns the new upper node."""
        assert child.parent is not None and child.segment is not None and 0 < at < len(child.tokens)
        parent = child.parent
        head_seg, tail_seg = seg.split(child.segment, at)
        seg.evaluate(head_seg, tail_seg)
        head = Node(parent, child.tokens[:at], child.start, head_seg)
        head.last_used = child.last_used
        parent.children[head.tokens[0]] = head
        self.nbytes += head_seg.nbytes + tail_seg.nbytes - child.segment.nbytes
        child.tokens, child.start, child.segment, child.parent = child.tokens[at:], child.start + at, tail_seg, head
        head.children[child.tokens[0]] = child
        self.nodes += 1
        return head

    # ------------------------------------------------------------------ #
    def pin(self, node: Node) -> None:
        node.pins += 1

    def unpin(self, node: Node) -> None:
        node.pins = max(0, node.pins - 1)

    def checkpoints_above(self, node: Node, count: int) -> list[Node]:
        """The nearest ``count`` ancestors of ``node`` holding a checkpoint."""
        out: list[Node] = []
        n = node.parent
        while n is not None and n is not self.root and len(out) < count:
            if n.state is not None:
                out.append(n)
            n = n.parent
        return out

    def enforce_budget(self) -> None:
        if self.nbytes > self.max_bytes:
            self._evict(lambda: self.nbytes > self.max_bytes)

    def expire(self, older_than: float) -> None:
        """Drop unpinned entries not used since ``older_than`` (clock time)."""
        self._evict(lambda: True, only=lambda n: n.pins == 0 and n.last_used < older_than)

    def drop_path(self, node: Node) -> int:
        """Remove ``node`` and the ancestors only it needs (a deleted
        conversation): stops at a node shared with another entry or pinned.
        Returns the bytes freed."""
        freed = 0
        while node is not self.root and node.attached and not node.children and node.pins == 0:
            parent = node.parent
            freed += self._drop(node)
            assert parent is not None
            node = parent
        return freed

    def _evict(self, more: Callable[[], bool], only: Callable[[Node], bool] | None = None) -> None:
        heap: list[tuple[int, float, int, Node]] = []

        def offer(n: Node) -> None:
            if n is self.root or not n.attached or (only is not None and not only(n)):
                return
            if not n.children or n.state is not None:
                heapq.heappush(heap, (1 if n.pins else 0, n.last_used, next(self._order), n))

        for n in self._walk():
            offer(n)
        while heap and more():
            _, _, _, n = heapq.heappop(heap)
            if not n.attached:
                continue
            if n.children:  # an inner node: only its checkpoint can go
                if n.state is not None:
                    self._drop_state(n)
                continue
            parent = n.parent
            self._drop(n)
            # A leaf left without a checkpoint on a model that needs one
            # serves nothing: it goes with the entry it carried.
            while parent is not None and self._useless(parent):
                n, parent = parent, parent.parent
                self._drop(n)
            if parent is not None:
                offer(parent)

    def _useless(self, n: Node) -> bool:
        return n is not self.root and not n.children and n.state is None and n.pins == 0 and self.needs_checkpoints

    def _drop(self, n: Node) -> int:
        assert n.parent is not None
        freed = n.nbytes
        del n.parent.children[n.tokens[0]]
        self._account(n, -1)
        if n.state is not None:
            self.nbytes -= n.state.nbytes
        n.attached, n.segment, n.state = False, None, None
        self.stats.evictions += 1
        self.stats.evicted_bytes += freed
        return freed

    def _drop_state(self, n: Node) -> None:
        assert n.state is not None
        self.nbytes -= n.state.nbytes
        self.stats.evictions += 1
        self.stats.evicted_bytes += n.state.nbytes
        n.state = None

    def _account(self, n: Node, sign: int) -> None:
        self.nbytes += sign * (n.segment.nbytes if n.segment else 0)
        self.tokens += sign * len(n.tokens)
        self.nodes += sign

    def _walk(self) -> list[Node]:
        out, stack = [], [self.root]
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children.values())
        return out

    def clear(self) -> None:
        for n in self._walk():
            n.attached = False
        self.root = Node(None, [], 0, None)
        self.nbytes = self.tokens = self.nodes = 0
