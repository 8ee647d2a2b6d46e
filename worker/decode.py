"""The decode step: every running sequence's next token from one model call.

kmlx's own, in place of mlx-lm's ``GenerationBatch``, because with many
streams on a fast GPU the step is bound by Python per sequence, not by the
model (docs/benchmarks.md). What a step costs beyond the model:

- **sampling**: one call per distinct sampler, not per row. Requests with
  equal settings share one sampler object (``sampling.make_sampler``), so
  a batch of 64 default requests samples in one call even when a few
  others use their own (a ``seed``, other settings);
- **logits processors** (penalties, logit_bias, grammar masks) run on the
  rows that have them, and the others' logits are not sliced or copied;
- **log-probabilities** are normalised only when a row asked for them or a
  sampler needs them (top-p); rows get theirs only if they asked;
- **stopping**: EOS and ``max_tokens`` are checked with numpy over the
  whole batch; per-row Python runs only for the rows that finished.

Pipelining is mlx-lm's: a step queues the next token's computation
(``mx.async_eval``) before it reads back the current one, so the
scheduler's per-token work overlaps the model's next forward pass.

A sequence joins with its KV cache holding all but its prompt's last token;
that token is its first input, and its first generated token comes out of
the step after (as with mlx-lm). Runs on the compute thread only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import TokenBuffer

from .sampling import GREEDY, LogitsProcessor, SamplerFn


@dataclass
class Joiner:
    """One sequence entering the decode batch."""

    uid: int
    tokens: list[int]  # every token in its KV cache (its prompt but the last token)
    last: int  # its prompt's last token: its first input
    max_tokens: int
    sampler: SamplerFn = GREEDY
    processors: tuple[LogitsProcessor, ...] = ()
    stop_on_eos: bool = True
    logprobs: bool = False  # hand out the log-probabilities each token was drawn from


@dataclass
class Finished:
    uid: int
    reason: str  # "stop" (an EOS token) or "length" (its max_tokens)
    tokens: list[int]  # every token the sequence's KV cache holds
    cache: list[Any]  # its per-layer KV cache, extracted from the batch


@dataclass
class Decoded:
    """One step's tokens, in row order, and the rows that ended with it."""

    uids: list[int]
    tokens: list[int]
    logprobs: dict[int, mx.array] = field(default_factory=dict)  # uid -> (vocab,) for rows that asked
    finished: dict[int, Finished] = field(default_factory=dict)  # uid -> its end (it has left the batch)


class DecodeBatch:
    def __init__(self, model: Any, eos_token_ids: Iterable[int]):
        self.model = model
        self.eos = np.array(sorted(set(eos_token_ids)), dtype=np.int64)
        self.uids: list[int] = []
        self.cache: list[Any] = []  # per-layer batch caches (BatchKVCache, ...)
        self.tokens: list[list[int]] = []  # per row: every token in its KV
        self.samplers: list[SamplerFn] = []
        self.processors: list[tuple[LogitsProcessor, ...]] = []
        self.contexts: list[TokenBuffer | None] = []  # token history on the device, for rows with processors
        self.wants_logprobs: list[bool] = []
        self.max_tokens = np.zeros(0, dtype=np.int64)
        self.generated = np.zeros(0, dtype=np.int64)
        self.stop_on_eos = np.zeros(0, dtype=np.bool_)
        self.fresh = np.zeros(0, dtype=np.bool_)  # its input is a prompt token: nothing to hand out yet
        self._inputs: mx.array | None = None  # (B,) this step's input tokens (sampled last step, maybe not evaluated yet)
        self._inputs_logprobs: mx.array | None = None  # (B, vocab) the distributions they were drawn from
        self._plan: _Plan | None = None  # how rows group for sampling; rebuilt when rows change

    def __len__(self) -> int:
        return len(self.uids)

    # ----------------------------------------------------------------- rows
    def join(self, joiners: Sequence[Joiner], cache: list[Any]) -> None:
        """Add sequences whose prefill is done; ``cache`` is their merged per-layer batch cache."""
        if not joiners:
            return
        n = len(joiners)
        if self.uids:
            for mine, theirs in zip(self.cache, cache):
                mine.extend(theirs)
        else:
            self.cache = cache
        self.uids += [j.uid for j in joiners]
        self.tokens += [list(j.tokens) for j in joiners]
        self.samplers += [j.sampler for j in joiners]
        self.processors += [tuple(j.processors) for j in joiners]
        self.contexts += [TokenBuffer(j.tokens) if j.processors else None for j in joiners]
        self.wants_logprobs += [j.logprobs for j in joiners]
        self.max_tokens = np.concatenate([self.max_tokens, [j.max_tokens for j in joiners]])
        self.generated = np.concatenate([self.generated, np.zeros(n, dtype=np.int64)])
        self.stop_on_eos = np.concatenate([self.stop_on_eos, [j.stop_on_eos for j in joiners]])
        self.fresh = np.concatenate([self.fresh, np.ones(n, dtype=np.bool_)])
        last = mx.array([j.last for j in joiners], dtype=mx.uint32)
        self._inputs = last if self._inputs is None else mx.concatenate([self._inputs.astype(mx.uint32), last])
        if self._inputs_logprobs is not None:  # nothing was drawn for a prompt token: a placeholder row
            pad = mx.zeros((n, self._inputs_logprobs.shape[-1]), dtype=self._inputs_logprobs.dtype)
            self._inputs_logprobs = mx.concatenate([self._inputs_logprobs, pad])
        self._plan = None

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices), in that order."""
        if len(rows) == len(self.uids):
            return
        if rows:
            for c in self.cache:
                c.filter(rows)
        else:
            self.cache = []
        idx = mx.array(rows, dtype=mx.int32) if rows else None
        self.uids = [self.uids[i] for i in rows]
        self.tokens = [self.tokens[i] for i in rows]
        self.samplers = [self.samplers[i] for i in rows]
        self.processors = [self.processors[i] for i in rows]
        self.contexts = [self.contexts[i] for i in rows]
        self.wants_logprobs = [self.wants_logprobs[i] for i in rows]
        self.max_tokens, self.generated = self.max_tokens[rows], self.generated[rows]
        self.stop_on_eos, self.fresh = self.stop_on_eos[rows], self.fresh[rows]
        self._inputs = self._inputs[idx] if idx is not None and self._inputs is not None else None
        lp = self._inputs_logprobs
        self._inputs_logprobs = lp[idx] if idx is not None and lp is not None and any(self.wants_logprobs) else None
        self._plan = None

    def row(self, uid: int) -> int | None:
        try:
            return self.uids.index(uid)
        except ValueError:
            return None

    def extract(self, row: int) -> tuple[list[Any], list[int]]:
        """A copy of one row's KV cache, and the tokens it holds."""
        return [c.extract(row) for c in self.cache], list(self.tokens[row])

    # ----------------------------------------------------------------- step
    def step(self) -> Decoded:
        if not self.uids or self._inputs is None:
            return Decoded([], [])
        plan = self._plan = self._plan or _Plan.of(self)
        inputs, inputs_logprobs = self._inputs, self._inputs_logprobs
        logits = self.model(inputs[:, None], cache=self.cache)[:, -1, :]
        contexts: list[mx.array] = []
        if plan.processed:
            logits, contexts = self._process(logits, inputs, plan.processed)
        normalised = plan.normalise or plan.logprobs
        scores = logits - mx.logsumexp(logits, axis=-1, keepdims=True) if normalised else logits
        self._inputs = plan.sample(scores)
        self._inputs_logprobs = scores if plan.logprobs else None
        # Queue the next step's tokens, then read this step's (computed last step).
        mx.async_eval(self._inputs, *([self._inputs_logprobs] if plan.logprobs else []), *contexts)
        return self._emit(np.array(inputs, dtype=np.int64), inputs_logprobs)

    def _process(self, logits: mx.array, inputs: mx.array, rows: list[int]) -> tuple[mx.array, list[mx.array]]:
        """Logits processors on the rows that have them; the others' logits are untouched."""
        contexts, out = [], []
        for i in rows:
            ctx = self.contexts[i]
            assert ctx is not None
            history = ctx.update_and_fetch(inputs[i : i + 1])
            contexts.append(history)
            row = logits[i : i + 1]
            for proc in self.processors[i]:
                row = proc(history, row)
            out.append(row.astype(logits.dtype))
        if len(rows) == len(self.uids):
            return mx.concatenate(out, axis=0), contexts
        logits[mx.array(rows, dtype=mx.int32)] = mx.concatenate(out, axis=0)
        return logits, contexts

    def _emit(self, current: np.ndarray, logprobs: mx.array | None) -> Decoded:
        """Hand out this step's tokens; rows that finished leave the batch."""
        for history, t in zip(self.tokens, current.tolist()):
            history.append(t)  # the KV holds it once the next forward pass ran: keep them in step
        out_rows = ~self.fresh
        self.generated += out_rows
        ended_eos = out_rows & self.stop_on_eos & (current[:, None] == self.eos).any(axis=1)  # np.isin: 6x slower here
        ended_len = out_rows & (self.generated >= self.max_tokens)
        self.fresh[:] = False
        rows = np.flatnonzero(out_rows)
        uids = [self.uids[i] for i in rows.tolist()]
        decoded = Decoded(uids, current[rows].tolist())
        if logprobs is not None:
            decoded.logprobs = {self.uids[i]: logprobs[i] for i in rows.tolist() if self.wants_logprobs[i]}
        ended = np.flatnonzero(ended_eos | ended_len).tolist()
        if ended:
            for i in ended:
                cache, tokens = self.extract(i)
                reason = "stop" if ended_eos[i] else "length"
                decoded.finished[self.uids[i]] = Finished(self.uids[i], reason, tokens, cache)
            gone = set(ended)
            self.keep([i for i in range(len(self.uids)) if i not in gone])
        return decoded


@dataclass
class _Plan:
    """How a step samples: rows grouped by sampler object (one call each),
    and which rows need processors or normalised log-probabilities."""

    groups: list[tuple[SamplerFn, mx.array | None]]  # (sampler, its rows; None: every row)
    order: mx.array | None  # undoes the grouping: concatenated group results -> row order
    processed: list[int]
    normalise: bool
    logprobs: bool

    @classmethod
    def of(cls, batch: DecodeBatch) -> _Plan:
        by_sampler: dict[int, tuple[SamplerFn, list[int]]] = {}
        for i, s in enumerate(batch.samplers):
            by_sampler.setdefault(id(s), (s, []))[1].append(i)
        processed = [i for i, p in enumerate(batch.processors) if p]
        # A plain function (not a sampling.Sampler) may need normalised scores: assume it does.
        normalise = any(getattr(s, "needs_logprobs", True) for s, _ in by_sampler.values())
        if len(by_sampler) == 1:
            (sampler, _), = by_sampler.values()
            return cls([(sampler, None)], None, processed, normalise, any(batch.wants_logprobs))
        groups: list[tuple[SamplerFn, mx.array | None]] = [(s, mx.array(rows, dtype=mx.int32)) for s, rows in by_sampler.values()]
        flat = [i for _, rows in by_sampler.values() for i in rows]
        order = mx.array(np.argsort(np.array(flat)), dtype=mx.int32)
        return cls(groups, order, processed, normalise, any(batch.wants_logprobs))

    def sample(self, scores: mx.array) -> mx.array:
        if self.order is None:
            return self.groups[0][0](scores).astype(mx.uint32)
        parts = [sampler(scores[rows]).astype(mx.uint32) for sampler, rows in self.groups]
        return mx.concatenate(parts)[self.order]
