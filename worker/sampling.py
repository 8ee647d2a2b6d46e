"""Per-sequence samplers and logits processors, built from resolved settings.

Filters come from mlx-lm's ``sample_utils`` (small pure functions); what we
add is a per-request random key, so ``seed`` makes a request reproducible even
while it shares a batch with others, and OpenAI's presence/frequency
penalties, which count only the completion's own tokens (mlx-lm's count a
window that includes the prompt).

A logits processor is called by mlx-lm's batch as ``f(tokens, logits)`` with
this sequence's token history (prompt and completion so far, the newest
token last) and its ``(1, vocab)`` logits, and returns new logits.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    greedy_sampler,
    make_repetition_penalty,
)

from .generation_config import Sampling

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]

REPETITION_CONTEXT = 64  # tokens the (HF-style) repetition penalty looks back over


def make_sampler(params: Sampling, *, seed_offset: int = 0) -> Sampler:
    """Greedy requests share one sampler object so the batch samples in one
    call. ``seed_offset`` gives each of a request's ``n`` choices its own
    reproducible stream."""
    if params.temperature <= 0.0:
        return greedy_sampler

    filters: list[Callable[[mx.array], mx.array]] = []
    if 0.0 < params.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, params.top_p))
    if params.min_p > 0.0:
        filters.append(lambda x: apply_min_p(x, params.min_p, 1))
    if params.top_k > 0:
        filters.append(lambda x: apply_top_k(x, params.top_k))

    inv_temp = 1.0 / params.temperature
    key = mx.random.key((params.seed + seed_offset) % 2**63) if params.seed is not None else None

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        for f in filters:
            logprobs = f(logprobs)
        if key is None:
            return mx.random.categorical(logprobs * inv_temp)
        key, sub = mx.random.split(key)
        return mx.random.categorical(logprobs * inv_temp, key=sub)

    return sample


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
