"""Continuous batching: sequences join and leave a running batch between steps.

The schedulers see only these types:

- ``SequenceSpec`` — what one sequence needs to join the batch: the tokens
  still to prefill, an optional KV cache holding the ones before them, its
  budget, its own sampler and logits processors (seeded sampling,
  penalties, constrained decoding all plug in there), and where its prefill
  should pause so the state there can be kept (``pauses``);
- ``Batch.step()`` — one decode step for every running sequence (``Token``,
  with its log-probabilities when it asked for them) plus one prefill chunk
  for each sequence still prefilling (``Prefill``: progress, and whether it
  paused);
- ``KVState`` — a sequence's tokens and KV cache, at its end
  (``Token.final``, ``Batch.remove``) or now (``Batch.state``), for the
  prompt cache.

Prefill is mlx-lm's ``PromptProcessingBatch``: up to ``prefill_batch``
prompts advance together, ``prefill_chunk`` tokens each per step, so a long
prompt never stalls the running streams for long. Decode is kmlx's own
(decode.py), because at many streams per-sequence Python, not the model,
bounds a step on a fast GPU. A sequence whose prompt is down to its last
token joins the decode batch at the start of a step and shares that step's
forward pass with the running ones (mlx-lm gives it a forward pass of its
own). mlx-lm's batch API is young and changes between minor versions: every
call into it is in this module and decode.py.

Runs on the compute thread only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import mlx.core as mx
from mlx_lm.generate import PromptProcessingBatch, StopSequences, generation_stream
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import maybe_set_recommended_wired_limit

from .decode import DecodeBatch, Joiner
from .sampling import GREEDY, LogitsProcessor, SamplerFn

BatchFinish = Literal["stop", "length"]  # an end-of-sequence token, or the sequence's max_tokens


@dataclass
class KVState:
    """What the model holds for one sequence: every token it has seen and
    the per-layer KV cache built from them."""

    tokens: list[int]
    cache: list[Any]


@dataclass
class SequenceSpec:
    tokens: list[int]  # still to prefill; at least the prompt's last token
    max_tokens: int
    cache: list[Any] | None = None  # per-layer KV already holding ``cached_tokens``; None: a fresh one
    cached_tokens: list[int] = field(default_factory=list)  # context for logits processors (penalties)
    sampler: SamplerFn | None = None  # None: greedy
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    stop_on_eos: bool = True  # False: only max_tokens ends it (``ignore_eos``)
    logprobs: bool = False  # Token.logprobs: the distribution each token was drawn from
    pauses: list[int] = field(default_factory=list)  # offsets into ``tokens``: prefill stops there for a step

    def cuts(self) -> list[int]:
        return [p for p in sorted(set(self.pauses)) if 0 < p < len(self.tokens)]

    def segments(self) -> list[list[int]]:
        cuts = self.cuts()
        return [self.tokens[a:b] for a, b in zip([0, *cuts], [*cuts, len(self.tokens)])]


@dataclass
class Prefill:
    """One prefill chunk of one sequence."""

    uid: int
    done: int  # tokens of ``SequenceSpec.tokens`` now in its KV
    paused: bool  # it reached one of its ``pauses``: ``Batch.state`` is the state there


@dataclass
class Token:
    """One generated token of one sequence."""

    uid: int
    token: int
    logprobs: Any  # mx.array (vocab,): the distribution this token was drawn from; None unless the spec asked
    finish: BatchFinish | None  # set on the sequence's last token; it has then left the batch
    final: KVState | None  # with ``finish``: the sequence's tokens and KV cache


@dataclass
class StepResult:
    prefilled: list[Prefill]  # sequences that prefilled a chunk of their prompt this step
    tokens: list[Token]  # one per decoding sequence


@dataclass
class _Prefilling:
    """A sequence in the prefill batch (or queued for it)."""

    uid: int
    spec: SequenceSpec
    segments: list[list[int]]  # still to prefill, the last one ending in the prompt's last token
    done: int = 0  # tokens of spec.tokens taken from the segments so far


class Batch:
    """The running batch: sequences join (``add``) and leave (``remove``, or
    by finishing) between steps."""

    def __init__(
        self, model: Any, *, eos_token_ids: Iterable[int], max_running: int, prefill_chunk: int, prefill_batch: int = 8,
    ):
        self.model = model
        self.max_running = max_running
        self.prefill_chunk = prefill_chunk
        self.prefill_batch = max(1, min(prefill_batch, max_running))
        self._next_uid = 0
        self._queue: deque[tuple[_Prefilling, list[Any] | None]] = deque()  # added, not yet prefilling
        self._prefill = _empty_prefill(model, prefill_chunk)
        self._prefilling: list[_Prefilling] = []  # row order of self._prefill
        self._decode = DecodeBatch(model, eos_token_ids)
        self._old_wired_limit = maybe_set_recommended_wired_limit()  # Metal: keep the weights resident

    def __len__(self) -> int:
        return len(self._queue) + len(self._prefilling) + len(self._decode)

    def add(self, spec: SequenceSpec) -> int:
        """Queue a sequence; its uid. It prefills over the next steps, then decodes."""
        if not spec.tokens:
            raise ValueError("a sequence needs at least one token to prefill")
        if spec.max_tokens <= 0:
            raise ValueError("max_tokens must be > 0")
        uid = self._next_uid
        self._next_uid += 1
        segments = spec.segments()
        if len(segments[-1]) > 1:  # the prompt's last token is the first decode input
            segments = [*segments[:-1], segments[-1][:-1], segments[-1][-1:]]
        self._queue.append((_Prefilling(uid, spec, segments), spec.cache))
        return uid

    def step(self) -> StepResult:
        with mx.stream(generation_stream):
            joined = self._join_decode()
            decoded = self._decode.step()
            prefilled = self._prefill_step()
        tokens = []
        for uid, token in zip(decoded.uids, decoded.tokens):
            end = decoded.finished.get(uid)
            tokens.append(Token(
                uid=uid, token=token, logprobs=decoded.logprobs.get(uid), finish=end.reason if end else None,  # type: ignore[arg-type]
                final=KVState(end.tokens, end.cache) if end else None,
            ))
        return StepResult(prefilled=joined + prefilled, tokens=tokens)

    def _room(self) -> int:
        return self.max_running - len(self._decode) - len(self._prefilling)

    def _join_decode(self) -> list[Prefill]:
        """Sequences whose prompt is down to its last token join the decode
        batch: prefilled ones, and queued ones whose cache held the rest
        (a conversation's next turn, the other choices of ``n``)."""
        ready = [i for i, p in enumerate(self._prefilling) if _only_last_token(p)]
        rows, tokens, caches = [], [], []
        if ready:
            moving = self._prefill.split(ready)
            rows = [self._prefilling[i] for i in ready]
            self._prefilling = [p for i, p in enumerate(self._prefilling) if i not in set(ready)]
            tokens, caches = list(moving.tokens), [moving.prompt_cache]
        cached = [q for q in self._queue if _only_last_token(q[0])][: max(0, self._room())]
        if cached:
            self._queue = deque(q for q in self._queue if not any(q is c for c in cached))
            merged = _prefill_batch(self.model, self.prefill_chunk, cached)
            rows += [p for p, _ in cached]
            tokens += merged.tokens
            caches.append(merged.prompt_cache)
        if not rows:
            return []
        cache = caches[0]
        for more in caches[1:]:  # both kinds joining in one step
            for mine, theirs in zip(cache, more):
                mine.extend(theirs)
        joiners = [
            Joiner(
                uid=p.uid, tokens=t, last=p.segments[0][0], max_tokens=p.spec.max_tokens,
                sampler=p.spec.sampler or GREEDY, processors=tuple(p.spec.logits_processors),
                stop_on_eos=p.spec.stop_on_eos, logprobs=p.spec.logprobs,
            )
            for p, t in zip(rows, tokens)
        ]
        self._decode.join(joiners, cache)
        return [Prefill(uid=p.uid, done=len(p.spec.tokens), paused=False) for p in rows]

    def _prefill_step(self) -> list[Prefill]:
        """Queued sequences join the prefill batch while there is room; then
        each prefilling sequence takes one chunk, all in one forward pass.
        (A queued sequence with only its last token left needs no prefill:
        it waits for room in the decode batch, ``_join_decode``.)"""
        room = min(self.prefill_batch - len(self._prefilling), self._room())
        entering = [q for q in self._queue if not _only_last_token(q[0])][: max(0, room)]
        if entering:
            self._queue = deque(q for q in self._queue if not any(q is e for e in entering))
            self._prefill.extend(_prefill_batch(self.model, self.prefill_chunk, entering))
            self._prefilling += [p for p, _ in entering]
        if not self._prefilling:
            return []
        chunks: list[list[int]] = []
        out: list[Prefill] = []
        for p in self._prefilling:  # none is down to its last token: _join_decode took those
            chunk, rest = p.segments[0][: self.prefill_chunk], p.segments[0][self.prefill_chunk :]
            if rest:
                p.segments[0] = rest
            else:
                p.segments.pop(0)
            p.done += len(chunk)
            chunks.append(chunk)
            out.append(Prefill(uid=p.uid, done=p.done, paused=not rest and p.done in p.spec.cuts()))
        self._prefill.prompt(chunks)
        return out

    def state(self, uid: int) -> KVState | None:
        """A sequence's tokens and KV cache as they are now (a copy of the
        cache's rows, taken between steps)."""
        row = self._decode.row(uid)
        if row is not None:
            cache, tokens = self._decode.extract(row)
            return KVState(tokens=tokens, cache=cache)
        for i, p in enumerate(self._prefilling):
            if p.uid == uid:
                return KVState(tokens=list(self._prefill.tokens[i]), cache=self._prefill.extract_cache(i))
        for p, given in self._queue:
            if p.uid == uid:
                return KVState(tokens=list(p.spec.cached_tokens), cache=given) if given is not None else None
        return None

    def remove(self, uids: list[int], *, keep_state: bool = False) -> dict[int, KVState]:
        """Take sequences out of the batch wherever they are (queued,
        prefilling or decoding); with ``keep_state``, what each one holds."""
        gone = set(uids)
        states: dict[int, KVState] = {}
        if keep_state:
            for uid in uids:
                state = self.state(uid)
                if state is not None:
                    states[uid] = state
        self._queue = deque(q for q in self._queue if q[0].uid not in gone)
        keep = [i for i, p in enumerate(self._prefilling) if p.uid not in gone]
        if len(keep) < len(self._prefilling):
            self._prefill.filter(keep)
            self._prefilling = [self._prefilling[i] for i in keep]
        self._decode.keep([i for i, uid in enumerate(self._decode.uids) if uid not in gone])
        return states

    def close(self) -> None:
        if self._old_wired_limit is not None:
            mx.synchronize(generation_stream)
            mx.set_wired_limit(self._old_wired_limit)
            self._old_wired_limit = None


def _only_last_token(p: _Prefilling) -> bool:
    return len(p.segments) == 1 and len(p.segments[0]) == 1


def _empty_prefill(model: Any, chunk: int) -> PromptProcessingBatch:
    return PromptProcessingBatch.empty(model, fallback_sampler=GREEDY, prefill_step_size=chunk)


def _prefill_batch(model: Any, chunk: int, entering: list[tuple[_Prefilling, list[Any] | None]]) -> PromptProcessingBatch:
    """mlx-lm's prompt batch for sequences entering prefill: their caches
    merged into one batch cache. Sampling and stopping are the decode
    batch's business; the prompt batch only carries placeholders."""
    n = len(entering)
    return PromptProcessingBatch(
        model=model,
        uids=[p.uid for p, _ in entering],
        caches=[cache if cache is not None else make_prompt_cache(model) for _, cache in entering],
        tokens=[list(p.spec.cached_tokens) for p, _ in entering],
        prefill_step_size=chunk,
        samplers=[GREEDY] * n,
        fallback_sampler=GREEDY,
        logits_processors=[[] for _ in range(n)],
        stop_sequences=[StopSequences()] * n,
        max_tokens=[p.spec.max_tokens for p, _ in entering],
    )
