"""logprobs / top_logprobs end to end, and OpenAI's penalties measured
exactly through them."""

from __future__ import annotations

import pytest

from tests.agents.conftest import sdk
from tests.agents.test_sampling_fields import token_id

ASK = [{"role": "user", "content": "Tell me a story"}]


def test_logprobs_non_stream(tiny_stack):
    r = sdk(tiny_stack).chat.completions.create(model="m", messages=ASK, max_tokens=12, temperature=0, logprobs=True, top_logprobs=5)
    choice = r.choices[0]
    items = choice.logprobs.content
    assert len(items) == 12
    assert "".join(i.token for i in items) == choice.message.content
    for i in items:
        assert bytes(i.bytes).decode() == i.token and i.logprob <= 0
        assert len(i.top_logprobs) == 5
        values = [t.logprob for t in i.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert i.top_logprobs[0].token == i.token and i.top_logprobs[0].logprob == pytest.approx(i.logprob)  # greedy


def test_logprobs_stream_and_without_alternatives(tiny_stack):
    chunks = list(sdk(tiny_stack).chat.completions.create(model="m", messages=ASK, max_tokens=10, temperature=0, logprobs=True, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    items = [i for c in chunks if c.choices and c.choices[0].logprobs for i in c.choices[0].logprobs.content]
    assert "".join(i.token for i in items) == content and len(items) == 10
    assert all(i.top_logprobs == [] for i in items)


def test_no_logprobs_unless_asked(tiny_stack):
    r = sdk(tiny_stack).chat.completions.create(model="m", messages=ASK, max_tokens=3)
    assert r.choices[0].logprobs is None


@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.0, 0.75), (0.5, 0.25)])
def test_penalties_shift_the_repeated_token_exactly(tiny_stack, tiny_model_path, presence, frequency):
    """The first token is forced to "x" by logit_bias; at the second position
    the penalties must lower x's logit by exactly presence + frequency."""
    x = token_id(tiny_model_path, "x")
    kw = dict(model="m", messages=ASK, max_tokens=2, temperature=0, logprobs=True, top_logprobs=20, logit_bias={str(x): 6})

    def second(**extra):
        r = sdk(tiny_stack).chat.completions.create(**kw, **extra)
        assert r.choices[0].logprobs.content[0].token == "x"
        return {t.token: t.logprob for t in r.choices[0].logprobs.content[1].top_logprobs}

    plain, penalised = second(), second(presence_penalty=presence, frequency_penalty=frequency)
    other = next(t for t in plain if t != "x" and t in penalised)
    shift = (plain["x"] - plain[other]) - (penalised["x"] - penalised[other])
    assert shift == pytest.approx(presence + frequency, abs=1e-3)
