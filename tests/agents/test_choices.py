"""n > 1: independent choices that share the prompt's prefill."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.agents.conftest import sdk
from tests.agents.test_structured_outputs import ASK, TOOLS, valid_call

STORY = [{"role": "user", "content": "Tell me a story about a fox"}]


def test_greedy_choices_match_a_single_greedy_reply(tiny_stack):
    """A fork starts from a copy of the first choice's prompt KV: if that copy
    were wrong, its greedy text would differ from a fresh request's."""
    client = sdk(tiny_stack)
    single = client.chat.completions.create(model="m", messages=STORY, max_tokens=16, temperature=0)
    many = client.chat.completions.create(model="m", messages=STORY, max_tokens=16, temperature=0, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert {c.message.content for c in many.choices} == {single.choices[0].message.content}
    assert many.usage.prompt_tokens == single.usage.prompt_tokens
    assert many.usage.completion_tokens == 3 * single.usage.completion_tokens


def test_sampled_choices_differ_and_are_reproducible(tiny_stack):
    client = sdk(tiny_stack)
    kw = dict(model="m", messages=STORY, max_tokens=12, temperature=1.0, seed=7, n=3)
    first = [c.message.content for c in client.chat.completions.create(**kw).choices]
    again = [c.message.content for c in client.chat.completions.create(**kw).choices]
    assert first == again
    assert len(set(first)) == 3


def test_streamed_choices(tiny_stack):
    chunks = [c for c in sdk(tiny_stack).chat.completions.create(model="m", messages=STORY, max_tokens=8, temperature=0, n=2, stream=True)
              if c.choices]
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert [c.finish_reason for c in mine if c.finish_reason] == ["length"]
        assert "".join(c.delta.content or "" for c in mine)


def test_each_choice_calls_a_tool_under_its_own_grammar(tiny_stack):
    r = sdk(tiny_stack).chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                                n=2, max_tokens=120, temperature=1.0, seed=3)
    assert len(r.choices) == 2
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert valid_call(call.function.name, json.loads(call.function.arguments))


def test_more_choices_than_the_worker_runs_is_a_400(tiny_stack):
    with pytest.raises(openai.BadRequestError) as info:
        sdk(tiny_stack).chat.completions.create(model="m", messages=STORY, max_tokens=2, n=100)
    assert info.value.body["param"] == "n"
    r = httpx.post(f"{tiny_stack.base_url}/chat/completions", json={"messages": STORY, "n": 0}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


def test_a_client_leaving_ends_every_choice(tiny_stack):
    import time

    with httpx.stream("POST", f"{tiny_stack.base_url}/chat/completions", timeout=60,
                      json={"messages": STORY, "max_tokens": 6000, "n": 3, "stream": True}) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i > 10:
                break
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(w["running"] == 0 and w["waiting"] == 0 for w in tiny_stack.worker_stats()):
            return
        time.sleep(0.2)
    raise AssertionError(f"choices still running: {tiny_stack.worker_stats()}")
