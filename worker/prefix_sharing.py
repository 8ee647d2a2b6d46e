"""Requests that share a prefix with one already running start from its KV
instead of computing the same prefix again.

Eight agents sending the same 2,000-token system prompt and tools at once
would otherwise prefill it eight times side by side: the cache only learns
a prefix when a request finishes. Here a new request looks at the
sequences in the batch (``leader``): if one holds, or is about to compute,
a longer prefix of its prompt than the prompt cache has, the new request
*waits* (parked, no batch slot) until the leader's KV covers that prefix,
which is then copied into the prompt cache; the request is then planned as
usual and prefills only the rest. The same total work as SGLang's or vLLM's
prefix-aware scheduling, and no request waits longer than the prefill it
would otherwise have done itself.

A model whose cache cannot be cut (checkpoints) can only share at the
leader's checkpoint positions (message boundaries), where the leader stops
during prefill and stores its state.

A parked request's first output (headers) is sent when it is placed.
Runs on the compute thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .batch import KVState
from .kv.manager import PromptCacheManager
from .kv.radix import shared_length
from .sequence import Sequence

MIN_SHARED = 16  # tokens worth waiting for; fewer are prefilled right away


@dataclass
class Parked:
    seq: Sequence
    leader: int  # the leader's batch uid
    target: int  # prompt tokens the leader's KV must cover


Extract = Callable[[int], "KVState | None"]


class PrefixSharing:
    def __init__(self, kv: PromptCacheManager, extract: Extract, min_shared: int = MIN_SHARED):
        self.kv = kv
        self.extract = extract  # a running sequence's (tokens, cache) now
        self.min_shared = min_shared
        self.parked: dict[str, Parked] = {}
        self.shared = 0  # prefixes copied from running sequences
        self.waits = 0  # requests that waited for one

    def __len__(self) -> int:
        return len(self.parked)

    def wait(self, seq: Sequence, running: Iterable[Sequence]) -> bool:
        """Park ``seq`` if a running sequence is computing a prefix it
        needs (True), or copy one already computed into the cache now."""
        if not self._reads_cache(seq):
            return False
        prompt = seq.prompt.token_ids
        best: tuple[int, Sequence] | None = None
        cached = -1
        for leader in running:
            if leader.finished or leader.uid < 0 or not self._writes_cache(leader):
                continue
            target = self._target(leader, prompt)
            if best is not None and target <= best[0]:
                continue
            if cached < 0:
                cached = self.kv.reusable(prompt)
            if target - cached >= self.min_shared:
                best = (target, leader)
        if best is None:
            return False
        target, leader = best
        if leader.kv_length >= target:
            self._copy(leader)
            return False
        self.parked[seq.request_id] = Parked(seq, leader.uid, target)
        self.waits += 1
        return True

    def ready(self, running: dict[int, Sequence]) -> list[Sequence]:
        """Parked sequences that can be placed now (their leader's KV covers
        their prefix, or the leader is gone), in arrival order."""
        out: list[Sequence] = []
        copied: set[int] = set()
        for rid, p in list(self.parked.items()):
            leader = running.get(p.leader)
            if leader is not None and not leader.finished and leader.kv_length < p.target:
                continue
            if leader is not None and not leader.finished and leader.uid not in copied:
                self._copy(leader)
                copied.add(leader.uid)
            del self.parked[rid]
            out.append(p.seq)
        return out

    def remove(self, request_id: str) -> Sequence | None:
        p = self.parked.pop(request_id, None)
        return p.seq if p is not None else None

    # ------------------------------------------------------------------ #
    def _target(self, leader: Sequence, prompt: list[int]) -> int:
        """Prompt tokens ``leader`` can supply: the shared prefix, or for a
        cache that cannot be cut, the leader's last checkpoint inside it."""
        n = len(prompt) - 1  # the last token is always prefilled
        shared = shared_length(leader.prompt.token_ids, prompt, 0, n)
        if not self.kv.needs_checkpoints:
            return shared
        checkpoints = leader.plan.checkpoints if leader.plan is not None else []
        return max((b for b in checkpoints if b <= shared), default=0)

    def _copy(self, leader: Sequence) -> None:
        """Put the leader's KV so far into the prompt cache. A model with
        checkpoints stored them already, at the positions that matter."""
        if self.kv.needs_checkpoints:
            return
        state = self.extract(leader.uid)
        if state is not None:
            self.kv.offer(state.tokens, state.cache)
            self.shared += 1

    @staticmethod
    def _reads_cache(seq: Sequence) -> bool:
        return not seq.request.reset_conversation

    @staticmethod
    def _writes_cache(seq: Sequence) -> bool:
        return seq.plan is not None and seq.plan.commit
