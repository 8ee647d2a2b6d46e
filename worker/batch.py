"""The one door into mlx-lm's continuous-batching API (``BatchGenerator``).

mlx-lm's batch API is young: its arguments, response fields and cache
handling have changed between minor versions. Every call into it goes
through this module, so an upgrade, or a faster decode loop of our own,
touches one file. The schedulers see only these types:

- ``SequenceSpec`` — what one sequence needs to join the batch: the tokens
  still to prefill, an optional KV cache holding the ones before them, its
  budget, its own sampler and logits processors (seeded sampling,
  penalties, constrained decoding all plug in there), and where its prefill
  should pause so the state there can be kept (``pauses``);
- ``Batch.step()`` — one prefill chunk (``Prefill``: progress, and whether
  it paused) plus one decode step for every running sequence (``Token``,
  with its log-probabilities over the vocabulary, for ``logprobs``);
- ``KVState`` — a sequence's tokens and KV cache, at its end
  (``Token.final``, ``Batch.remove``) or now (``Batch.state``), for the
  prompt cache.

Runs on the compute thread only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from mlx_lm.generate import BatchGenerator, StopSequences
from mlx_lm.sample_utils import greedy_sampler

from .sampling import LogitsProcessor, Sampler

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
    sampler: Sampler | None = None  # None: greedy
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    stop_on_eos: bool = True  # False: only max_tokens ends it (``ignore_eos``)
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
    logprobs: Any  # mx.array: log-probabilities over the vocabulary this token was drawn from
    finish: BatchFinish | None  # set on the sequence's last token; it has then left the batch
    final: KVState | None  # with ``finish``: the sequence's tokens and KV cache


@dataclass
class StepResult:
    prefilled: list[Prefill]  # sequences that prefilled a chunk of their prompt this step
    tokens: list[Token]  # one per decoding sequence


class Batch:
    """The running batch: sequences join (``add``) and leave (``remove``, or
    by finishing) between steps."""

    def __init__(self, model: Any, *, eos_token_ids: Iterable[int], max_running: int, prefill_chunk: int):
        eos = [[t] for t in sorted(eos_token_ids)]
        self._gen = BatchGenerator(
            model,
            stop_tokens=eos,
            completion_batch_size=max_running,
            prefill_batch_size=min(max_running, 8),
            prefill_step_size=prefill_chunk,
        )
        self._eos_stop = StopSequences(eos)
        self._no_stop = StopSequences([])
        self._pauses: dict[int, set[int]] = {}  # uid -> where its prefill pauses (SequenceSpec.pauses)

    def add(self, spec: SequenceSpec) -> int:
        """Queue a sequence; its uid. It prefills over the next steps, then decodes."""
        (uid,) = self._gen.insert_segments(
            [spec.segments()],
            caches=[spec.cache] if spec.cache is not None else None,
            all_tokens=[spec.cached_tokens],
            max_tokens=[spec.max_tokens],
            samplers=[spec.sampler or greedy_sampler],  # one shared object: a greedy batch samples in one call
            logits_processors=[spec.logits_processors],
            stop_sequences=[self._eos_stop if spec.stop_on_eos else self._no_stop],
        )
        if spec.pauses:
            self._pauses[int(uid)] = set(spec.cuts())
        return int(uid)

    def step(self) -> StepResult:
        prompt_responses, generation_responses = self._gen.next()
        tokens = [
            Token(
                uid=r.uid,
                token=r.token,
                logprobs=r.logprobs,
                finish=r.finish_reason,
                final=KVState(r.all_tokens, r.prompt_cache) if r.finish_reason is not None else None,
            )
            for r in generation_responses
        ]
        prefilled = [
            Prefill(uid=p.uid, done=p.progress[0], paused=p.end_of_segment and p.progress[0] in self._pauses.get(p.uid, ()))
            for p in prompt_responses
        ]
        for t in tokens:
            if t.finish is not None:
                self._pauses.pop(t.uid, None)
        return StepResult(prefilled=prefilled, tokens=tokens)

    def state(self, uid: int) -> KVState | None:
        """A sequence's tokens and KV cache as they are now (a copy of the
        cache's rows, taken between steps)."""
        found = self._gen.extract_cache([uid]).get(uid)
        return KVState(tokens=list(found[1]), cache=found[0]) if found is not None else None

    def remove(self, uids: list[int], *, keep_state: bool = False) -> dict[int, KVState]:
        """Take sequences out of the batch wherever they are (queued,
        prefilling or decoding); with ``keep_state``, what each one holds."""
        for uid in uids:
            self._pauses.pop(uid, None)
        states = self._gen.remove(uids, return_prompt_caches=keep_state)
        return {uid: KVState(tokens=tokens, cache=cache) for uid, (cache, tokens) in states.items()}

    def close(self) -> None:
        self._gen.close()
