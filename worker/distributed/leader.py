"""Rank 0's side: what its scheduler does, queued as ops for the other ranks.

``Leader`` owns the op queue and the channel. ``ReplicatedBatch`` is
``worker/batch.py``'s ``Batch`` whose every call is also queued for the
followers; a step first sends the queue, so every rank's batch goes through
the same adds, removals and steps.

Sampling stays on rank 0, where the requests' samplers, logits processors
(penalties, logit_bias) and grammar masks live. Every sequence on rank 0
shares one ``RowSampler``: each row's own sampler draws its token, then one
all-reduce hands the batch's tokens to every rank, whose sequences use
``follower_sampler``. So every rank's batch sees the same tokens, ends the
same sequences at the same step (stop tokens, max_tokens), and its KV holds
what rank 0's does — without any rank having to reproduce a sample (float
differences between ranks, grammar state, seeds). Cost: one all-reduce of
four bytes per sequence and step.

KV caches are never sent, only named: a cache rank 0 took from its batch
(``state``, ``remove``, a finished sequence) is a ``TaggedCache`` that
knows its ``ops.StateRef``; a fork of it (n > 1 choices) keeps the tag, so
the followers rebuild their share of it from their own batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from ..batch import Batch, KVState, SequenceSpec, StepResult
from . import ops
from .group import Channel, ChannelError, GroupBroken
from .model import RankModel

log = logging.getLogger("kmlx.worker.distributed")

HEARTBEAT_SECONDS = 1.0  # an idle rank 0 tells the others it is alive this often


class TaggedCache(list):
    """A KV cache (per-layer list) that knows where the other ranks find
    their share of it. ``copy.deepcopy`` keeps the tag (forks copy caches)."""

    def __init__(self, layers: Iterable[Any], source: ops.CacheRef):
        super().__init__(layers)
        self.source = source


class Leader:
    """Rank 0's queue of ops, sent before anything the other ranks take part in."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self._queue: list[ops.Op] = []
        self._states = 0  # ids handed out: the followers count the same way
        self.broken: str | None = None
        self.last_sent = time.monotonic()
        self.steps = 0
        self.step_bytes = 0  # op bytes sent with steps (the per-step control traffic)

    def queue(self, op: ops.Op) -> None:
        self._queue.append(op)

    def new_state(self) -> int:
        self._states += 1
        return self._states - 1

    def flush(self) -> int:
        """Send the queued ops (every rank receives them in this order); the bytes sent."""
        if self.broken is not None:
            raise GroupBroken(self.broken)
        batch, self._queue = self._queue, []
        payload = ops.encode(batch)
        try:
            self.channel.broadcast(payload)
        except ChannelError as exc:
            self.fail(str(exc))
        self.last_sent = time.monotonic()
        return len(payload)

    def agree(self, ok: bool) -> bool:
        """After a flush that ended with an agreed op: did every rank succeed?"""
        try:
            return self.channel.agree(ok)
        except ChannelError as exc:
            self.fail(str(exc))
            raise AssertionError("unreachable") from exc

    def fail(self, why: str) -> None:
        self.broken = why
        raise GroupBroken(why)

    def idle(self) -> None:
        """Called by an idle compute loop: a heartbeat now and then, so the
        other ranks can tell rank 0 is alive (and rank 0 learns if they are not)."""
        if self.broken is None and time.monotonic() - self.last_sent >= HEARTBEAT_SECONDS:
            self.queue(ops.Heartbeat())
            self.flush()

    def close(self, reason: str) -> None:
        """The other ranks stop (after rank 0's last work)."""
        if self.broken is None:
            self.queue(ops.Shutdown(reason))
            try:
                self.flush()
            except GroupBroken:
                pass


class RowSampler:
    """Rank 0's one sampler for every sequence: the rows' own samplers
    (registered by their ``RowTag`` processors, which mlx-lm calls row by
    row just before sampling), then the batch's tokens to every rank."""

    def __init__(self, group: Any):
        self.group = group
        self.rows: list[Any] = []

    def __call__(self, logprobs: Any) -> Any:
        import mlx.core as mx

        rows, self.rows = self.rows, []
        if len(rows) != logprobs.shape[0]:
            raise AssertionError(f"{len(rows)} sampler rows for a batch of {logprobs.shape[0]}")
        if all(s is rows[0] for s in rows):
            tokens = rows[0](logprobs)
        else:
            tokens = mx.concatenate([s(logprobs[i : i + 1]) for i, s in enumerate(rows)], axis=0)
        return mx.distributed.all_sum(tokens.astype(mx.int32), group=self.group)


class RowTag:
    """A logits processor that changes nothing: it tells the ``RowSampler``
    which sampler the row it is called for uses."""

    def __init__(self, sampler: Any, row_sampler: RowSampler):
        self.sampler = sampler
        self.row_sampler = row_sampler

    def __call__(self, _tokens: Any, logits: Any) -> Any:
        self.row_sampler.rows.append(self.sampler)
        return logits


def follower_sampler(group: Any) -> Any:
    """The other ranks' sampler: rank 0's tokens (after this rank's part of the forward)."""
    import mlx.core as mx

    def sample(logprobs: Any) -> Any:
        zeros = mx.depends(mx.zeros((logprobs.shape[0],), mx.int32), logprobs)
        return mx.distributed.all_sum(zeros, group=group)

    return sample


class ReplicatedBatch(Batch):
    """``Batch`` on rank 0, mirrored on every rank (same methods)."""

    def __init__(self, model: RankModel, *, leader: Leader, eos_token_ids: Iterable[int], max_running: int, prefill_chunk: int):
        from mlx_lm.sample_utils import greedy_sampler

        super().__init__(model, eos_token_ids=eos_token_ids, max_running=max_running, prefill_chunk=prefill_chunk)
        self.leader = leader
        self.model = model
        self.row_sampler = RowSampler(model.group)
        self._greedy = greedy_sampler

    def add(self, spec: SequenceSpec) -> int:
        cache = _cache_ref(spec.cache)
        sampler = spec.sampler or self._greedy
        spec.logits_processors = [*spec.logits_processors, RowTag(sampler, self.row_sampler)]
        spec.sampler = self.row_sampler
        uid = super().add(spec)
        self.leader.queue(ops.Add(uid, list(spec.tokens), spec.cuts(), cache, spec.max_tokens, spec.stop_on_eos))
        return uid

    def step(self) -> StepResult:
        self.leader.queue(ops.Step())
        self.leader.step_bytes += self.leader.flush()
        self.leader.steps += 1
        self.model.in_batch = True
        try:
            result = super().step()
        except GroupBroken:
            raise
        except Exception as exc:  # the other ranks may have run this step: they and rank 0 now differ
            self.leader.fail(f"a batch step failed on rank 0: {exc!r}")
            raise AssertionError("unreachable") from exc
        finally:
            self.model.in_batch = False
        for t in result.tokens:
            if t.final is not None:  # the followers' batch ended the same sequence: same state id
                t.final = KVState(t.final.tokens, TaggedCache(t.final.cache, ops.StateRef(self.leader.new_state())))
        return result

    def state(self, uid: int) -> KVState | None:
        self.leader.queue(ops.Extract(uid))
        sid = self.leader.new_state()
        found = super().state(uid)
        return None if found is None else KVState(found.tokens, TaggedCache(found.cache, ops.StateRef(sid)))

    def remove(self, uids: list[int], *, keep_state: bool = False) -> dict[int, KVState]:
        self.leader.queue(ops.Remove(list(uids), keep_state))
        ids = {uid: self.leader.new_state() for uid in uids} if keep_state else {}
        states = super().remove(uids, keep_state=keep_state)
        return {uid: KVState(s.tokens, TaggedCache(s.cache, ops.StateRef(ids[uid]))) for uid, s in states.items()}


def _cache_ref(cache: list[Any] | None) -> ops.CacheRef | None:
    """How the followers build their share of a cache entering the batch."""
    from ..kv.views import cache_length

    if cache is None:
        return None
    source = getattr(cache, "source", None)
    if source is None:
        raise GroupBroken("a KV cache of unknown origin entered the batch: the other ranks cannot rebuild it")
    if isinstance(source, ops.StateRef):
        return ops.StateRef(source.id, cache_length(cache))  # a fork's copy, cut back to the prompt
    if isinstance(source, ops.TreeRef):
        n = cache_length(cache)
        return source if n is None or n == len(source.tokens) else ops.TreeRef(source.tokens[:n])
    return source
