"""Per-sequence samplers and logits processors, built from resolved settings.

Filters come from mlx-lm's ``sample_utils`` (small pure functions); what we
add is a per-request random key, so ``seed`` makes a request reproducible even
while it shares a batch with others, and OpenAI's presence/frequency
penalties, which count only the completion's own tokens (mlx-lm's count a
window that includes the prompt).

Requests with equal settings and no seed get the same ``Sampler`` object:
the decode step (decode.py) samples all the rows of one object in one call,
so a batch of default requests costs one sampling call, not one per row.

A logits processor is called by the decode step as ``f(tokens, logits)``
with this sequence's token history (prompt and completion so far, the
newest token last) and its ``(1, vocab)`` logits, and returns new logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    greedy_sampler,
    make_repetition_penalty,
)

from .generation_config import Sampling

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]
SamplerFn = Callable[[mx.array], mx.array]  # a Sampler, or any function drawing one token per row

REPETITION_CONTEXT = 64  # tokens the (HF-style) repetition penalty looks back over


@dataclass(frozen=True, eq=False)
class Sampler:
    """Draws one token per row of ``(rows, vocab)`` scores."""

    draw: Callable[[mx.array], mx.array]
    # False: any per-row shift of the scores draws the same tokens (argmax,
    # temperature, top-k, min-p), so unnormalised logits will do and the
    # step skips the log-softmax. top-p sums probabilities: it needs them.
    needs_logprobs: bool = False

    def __call__(self, scores: mx.array) -> mx.array:
        return self.draw(scores)


GREEDY = Sampler(greedy_sampler)


def make_sampler(params: Sampling, *, seed_offset: int = 0) -> Sampler:
    """The sampler for these settings: shared by every request with the
    same ones unless ``seed`` is set. ``seed_offset`` gives each of a
    request's ``n`` choices its own reproducible stream."""
    if params.temperature <= 0.0:
        return GREEDY
    if params.seed is None:
        return _shared(params.temperature, params.top_p, params.min_p, params.top_k)
    return _build(params.temperature, params.top_p, params.min_p, params.top_k, seed=(params.seed + seed_offset) % 2**63)


@lru_cache(maxsize=64)
def _shared(temperature: float, top_p: float, min_p: float, top_k: int) -> Sampler:
    return _build(temperature, top_p, min_p, top_k, seed=None)


def _build(temperature: float, top_p: float, min_p: float, top_k: int, *, seed: int | None) -> Sampler:
    filters: list[Callable[[mx.array], mx.array]] = []
    if 0.0 < top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, top_p))
    if min_p > 0.0:
        filters.append(lambda x: apply_min_p(x, min_p, 1))
    if top_k > 0:
        filters.append(lambda x: apply_top_k(x, top_k))

    inv_temp = 1.0 / temperature
    key = mx.random.key(seed) if seed is not None else None

    def sample(scores: mx.array) -> mx.array:
        nonlocal key
        for f in filters:
            scores = f(scores)
        if key is None:
            return mx.random.categorical(scores * inv_temp)
        key, sub = mx.random.split(key)
        return mx.random.categorical(scores * inv_temp, key=sub)

    return Sampler(sample, needs_logprobs=0.0 < top_p < 1.0)


def make_logits_processors(params: Sampling) -> list[LogitsProcessor]:
    procs: list[LogitsProcessor] = []
    if params.logit_bias:
        procs.append(logit_bias_processor(params.logit_bias))
    if params.repetition_penalty and params.repetition_penalty != 1.0:
        procs.append(make_repetition_penalty(params.repetition_penalty, context_size=REPETITION_CONTEXT))
    if params.presence_penalty or params.frequency_penalty:
        procs.append(CompletionPenalties(params.presence_penalty, params.frequency_penalty))
    return procs


def logit_bias_processor(bias: dict[int, float]) -> LogitsProcessor:
    ids = mx.array(list(bias.keys()))
    values = mx.array(list(bias.values()), dtype=mx.float32)

    def apply(_tokens: mx.array, logits: mx.array) -> mx.array:
        return logits.at[:, ids].add(values.astype(logits.dtype))

    return apply


class CompletionPenalties:
    """OpenAI's penalties: ``logit[j] -= c[j] * frequency + (c[j] > 0) * presence``
    where ``c[j]`` counts token ``j`` in the completion so far. The counts
    stay on the device and are updated lazily (no sync per step)."""

    def __init__(self, presence: float, frequency: float):
        self.presence = presence
        self.frequency = frequency
        self.counts: mx.array | None = None
        self._seen = 0  # history length when last called

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        n = tokens.size
        if self.counts is None:  # the first call sees only the prompt
            self.counts = mx.zeros((logits.shape[-1],), dtype=mx.float32)
        elif n > self._seen:
            self.counts = self.counts.at[tokens[self._seen - n :]].add(1.0)
        self._seen = n
        penalty = self.counts * self.frequency + (self.counts > 0) * self.presence
        return logits - penalty.astype(logits.dtype)
