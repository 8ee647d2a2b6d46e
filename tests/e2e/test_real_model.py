"""The real default model (SmolLM2-135M-Instruct from its GGUF), end to end."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.e2e import starts_processes


@pytest.fixture(scope="module")
@starts_processes
def real_stack(default_model_path, log_dir):
    from tests.support.processes import start_stack

    stack = start_stack(default_model_path, log_dir)
    yield stack
    stack.stop()


def test_capital_of_france_is_paris(real_stack):
    client = openai.OpenAI(base_url=real_stack.base_url, api_key="unused", max_retries=0, timeout=300)
    resp = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0.0,
    )
    assert "Paris" in (resp.choices[0].message.content or "")
    assert resp.model == "SmolLM2-135M-Instruct"


def test_cached_follow_up_is_identical_to_uncached_and_skips_the_reply(real_stack):
    msgs = [
        {"role": "system", "content": "You are a geography tutor."},
        {"role": "user", "content": "Name one river in Europe."},
    ]
    url = f"{real_stack.base_url}/chat/completions"
    r1 = httpx.post(url, json={"conversation": "geo", "messages": msgs, "max_tokens": 16, "temperature": 0}, timeout=300)
    u1 = r1.json()["usage"]
    msgs += [{"role": "assistant", "content": r1.json()["choices"][0]["message"]["content"]}, {"role": "user", "content": "And another one?"}]
    r2 = httpx.post(url, json={"conversation": "geo", "messages": msgs, "max_tokens": 16, "temperature": 0}, timeout=300)
    r3 = httpx.post(url, json={"conversation": "geo-x", "messages": msgs, "max_tokens": 16, "temperature": 0, "reset_conversation": True}, timeout=300)
    assert r2.headers["x-conv-kv"] == "hit"
    # the model's own reply was kept in the cache: only the new user turn is prefilled
    assert int(r2.headers["x-conv-cached-tokens"]) == u1["prompt_tokens"] + u1["completion_tokens"]
    assert r3.headers["x-conv-kv"] == "disabled"
    assert r2.json()["choices"][0]["message"]["content"] == r3.json()["choices"][0]["message"]["content"]
