"""Logits processors: OpenAI's penalties count the completion only; logit_bias adds."""

from __future__ import annotations

import mlx.core as mx
import pytest

from worker.generation_config import Sampling
from worker.sampling import CompletionPenalties, logit_bias_processor, make_logits_processors


def test_penalties_count_only_completion_tokens():
    p = CompletionPenalties(presence=0.5, frequency=0.25)
    logits = mx.zeros((1, 6))
    prompt = mx.array([3, 3, 3, 1])  # the prompt's repeats must not count
    assert p(prompt, logits).tolist() == [[0.0] * 6]
    history = mx.array([3, 3, 3, 1, 2])  # first completion token: 2
    assert p(history, logits).tolist() == [[0, 0, -0.75, 0, 0, 0]]
    history = mx.array([3, 3, 3, 1, 2, 2, 4])  # two more tokens since the last call
    out = p(history, logits).tolist()[0]
    assert out == pytest.approx([0, 0, -1.0, 0, -0.75, 0])


def test_negative_penalties_encourage():
    p = CompletionPenalties(presence=-1.0, frequency=0.0)
    logits = mx.zeros((1, 3))
    p(mx.array([0]), logits)
    assert p(mx.array([0, 1]), logits).tolist() == [[0, 1.0, 0]]


def test_logit_bias_adds_to_the_named_ids():
    f = logit_bias_processor({1: 100.0, 4: -2.5})
    assert f(mx.array([0]), mx.zeros((1, 5))).tolist() == [[0, 100.0, 0, 0, -2.5]]


def test_processors_only_when_asked():
    assert make_logits_processors(Sampling()) == []
    procs = make_logits_processors(Sampling(repetition_penalty=1.2, frequency_penalty=0.1, logit_bias={0: 1.0}))
    assert len(procs) == 3


def test_equal_unseeded_settings_share_one_sampler_object():
    """The decode step samples every row of one sampler object in one call
    (worker/decode.py), so equal settings must give the same object."""
    from worker.sampling import GREEDY, make_sampler

    assert make_sampler(Sampling(temperature=0.0)) is GREEDY
    a, b = make_sampler(Sampling(temperature=0.7, top_p=0.9)), make_sampler(Sampling(temperature=0.7, top_p=0.9))
    assert a is b and a.needs_logprobs  # top-p sums probabilities
    assert make_sampler(Sampling(temperature=0.7)) is not a and not make_sampler(Sampling(temperature=0.7)).needs_logprobs
    seeded = [make_sampler(Sampling(temperature=0.7, seed=1)) for _ in range(2)]
    assert seeded[0] is not seeded[1] and seeded[0] is not make_sampler(Sampling(temperature=0.7))  # a seed is its own stream


def test_a_seeded_sampler_is_reproducible_and_choices_differ():
    from worker.sampling import make_sampler

    scores = mx.log(mx.ones((1, 50)) / 50)
    draw = lambda s: [s(scores).item() for _ in range(8)]  # noqa: E731
    assert draw(make_sampler(Sampling(temperature=1.0, seed=7))) == draw(make_sampler(Sampling(temperature=1.0, seed=7)))
    assert draw(make_sampler(Sampling(temperature=1.0, seed=7))) != draw(make_sampler(Sampling(temperature=1.0, seed=7), seed_offset=1))
