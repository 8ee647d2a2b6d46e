"""Per-request samplers and logits processors, built from SamplingParams.

Filters come from mlx-lm's ``sample_utils`` (small pure functions); what we
add is a per-request random key, so ``seed`` makes a request reproducible even
while it shares a batch with others.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    greedy_sampler,
    make_repetition_penalty,
)

from protocol.messages import SamplingParams

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


def make_sampler(params: SamplingParams) -> Sampler:
    """Greedy requests share one sampler object so the batch samples in one call."""
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
    key = mx.random.key(params.seed % 2**63) if params.seed is not None else None

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        for f in filters:
            logprobs = f(logprobs)
        if key is None:
            return mx.random.categorical(logprobs * inv_temp)
        key, sub = mx.random.split(key)
        return mx.random.categorical(logprobs * inv_temp, key=sub)

    return sample


def make_logits_processors(params: SamplingParams) -> list[LogitsProcessor]:
    if params.repetition_penalty and params.repetition_penalty != 1.0:
        return [make_repetition_penalty(params.repetition_penalty, context_size=64)]
    return []
