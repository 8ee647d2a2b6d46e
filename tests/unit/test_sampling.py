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
