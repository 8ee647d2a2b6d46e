"""Sampling fields end to end: defaults from the model's generation_config,
penalties, logit_bias, template variables; refusals name the field."""

from __future__ import annotations

import httpx
import openai
import pytest
from tokenizers import Tokenizer

from tests.agents.conftest import sdk


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def token_id(model_dir, text: str) -> int:
    (tid,) = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    return tid


def test_generation_config_sets_what_the_request_leaves_out(hermes_stack):
    # The model's generation_config.json says temperature 0: unseeded requests agree.
    client = sdk(hermes_stack)
    runs = {client.chat.completions.create(model="m", messages=ask("Write words"), max_tokens=12).choices[0].message.content for _ in range(3)}
    assert len(runs) == 1
    # The request's own temperature still wins: sampling at 1.5 varies.
    hot = {client.chat.completions.create(model="m", messages=ask("Write words"), max_tokens=12, temperature=1.5).choices[0].message.content for _ in range(3)}
    assert len(hot) > 1


def test_generation_config_none_uses_flags(hermes_model, make_stack):
    stack = make_stack(hermes_model, worker_args=["--generation-config", "none", "--default-temperature", "1.5"])
    client = sdk(stack)
    runs = {client.chat.completions.create(model="m", messages=ask("Write words"), max_tokens=12).choices[0].message.content for _ in range(3)}
    assert len(runs) > 1


def test_logit_bias_and_frequency_penalty(hermes_stack, hermes_model):
    client = sdk(hermes_stack)
    x = token_id(hermes_model, "x")
    kw = dict(model="m", messages=ask("Hi"), max_tokens=30, temperature=0)
    plain = client.chat.completions.create(**kw, logit_bias={str(x): 10}).choices[0].message.content
    assert plain == "x" * 30
    # OpenAI's frequency penalty: each earlier "x" costs 2, so after ~5 the bias is spent
    damped = client.chat.completions.create(**kw, logit_bias={str(x): 10}, frequency_penalty=2.0).choices[0].message.content
    assert damped.startswith("xxx") and damped.count("x") <= 7, damped


def test_logit_bias_outside_the_vocabulary_is_a_400(hermes_stack):
    r = httpx.post(f"{hermes_stack.base_url}/chat/completions", json={"messages": ask("Hi"), "logit_bias": {"999999": 5}}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "logit_bias"


def test_chat_template_kwargs_reach_the_template(hermes_stack):
    client = sdk(hermes_stack)

    def prompt_tokens(**extra) -> int:
        return client.chat.completions.create(model="m", messages=ask("Hi"), max_tokens=1, **extra).usage.prompt_tokens

    # The worker's --chat-template-kwargs default closes the think block in the prompt...
    closed = prompt_tokens()
    # ...a request can turn it back on, directly or through reasoning_effort.
    opened = prompt_tokens(extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert closed > opened
    assert prompt_tokens(reasoning_effort="high") == opened
    assert prompt_tokens(reasoning_effort="none") == closed


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"chat_template_kwargs": {"enable_thinking": False}}, "chat_template_kwargs.enable_thinking"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
    ],
)
def test_template_variables_the_template_ignores_are_refused(tiny_stack, extra, param):
    client = openai.OpenAI(base_url=tiny_stack.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=ask("Hi"), max_tokens=2, extra_body=extra)
    assert info.value.body["param"] == param
