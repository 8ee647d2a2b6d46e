"""The chat API end to end: real gateway + worker processes, real ZeroMQ,
real HTTP, the OpenAI SDK as the client, the tiny model generating."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def client(tiny_stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_stack.base_url, api_key="unused", max_retries=0, timeout=60)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_models_lists_the_worker_model(client, tiny_stack):
    models = client.models.list().data
    assert len(models) == 1
    assert models[0].id == tiny_stack_model_id(tiny_stack)
    assert models[0].created > 1_600_000_000


def tiny_stack_model_id(stack) -> str:
    return httpx.get(f"{stack.root_url}/health").json()["workers"][0]["model"]


def test_non_stream_completion_and_usage(client):
    # A conversation and a system prompt of its own: the prompt cache by
    # content can serve at most the template's opening tokens from earlier tests.
    nonce = time.time_ns()
    conv = {"conversation": f"usage-{nonce}"}
    messages = [{"role": "system", "content": f"Session {nonce}."}, *ask("Hello there")]
    r = client.chat.completions.with_raw_response.create(model="tiny", messages=messages, max_tokens=8, extra_body=conv, **GREEDY)
    resp = r.parse()
    assert resp.object == "chat.completion"
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content
    u = resp.usage
    assert u.completion_tokens == 8
    assert u.prompt_tokens > 5
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    extra = resp.model_extra["usage"] if "usage" in (resp.model_extra or {}) else u.model_extra
    assert extra["tokens_per_second"] > 0
    assert extra["input_tokens"] == u.prompt_tokens and extra["output_tokens"] == 8
    assert u.prompt_tokens_details.cached_tokens < 5
    assert r.headers["x-request-id"] == resp.id
    assert r.headers["x-conv-id"]


def test_stream_matches_non_stream_and_reports_usage(client):
    full = client.chat.completions.create(model="tiny", messages=ask("Tell me a story"), max_tokens=12, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=ask("Tell me a story"), max_tokens=12, stream=True,
            stream_options={"include_usage": True}, **GREEDY,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_without_include_usage_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=ask("Hi"), max_tokens=3, stream=True, **GREEDY))
    assert all(c.usage is None for c in chunks)


def test_stop_sequence_is_honoured_and_never_emitted(client):
    base = client.chat.completions.create(model="tiny", messages=ask("Count"), max_tokens=24, **GREEDY).choices[0].message.content
    assert len(base) > 10
    stop = base[len(base) // 2 : len(base) // 2 + 3]
    expected = base[: base.index(stop)]
    for stream in (False, True):
        if stream:
            chunks = client.chat.completions.create(model="tiny", messages=ask("Count"), max_tokens=24, stop=[stop], stream=True, **GREEDY)
            parts = list(chunks)
            text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
            reason = [c.choices[0].finish_reason for c in parts if c.choices and c.choices[0].finish_reason][0]
        else:
            resp = client.chat.completions.create(model="tiny", messages=ask("Count"), max_tokens=24, stop=stop, **GREEDY)
            text, reason = resp.choices[0].message.content, resp.choices[0].finish_reason
        assert text == expected
        assert stop not in text
        assert reason == "stop"


def test_max_completion_tokens_alias(client):
    resp = client.chat.completions.create(model="tiny", messages=ask("Hi"), max_completion_tokens=4, **GREEDY)
    assert resp.usage.completion_tokens == 4
    assert resp.choices[0].finish_reason == "length"


def test_seed_makes_sampling_reproducible(client):
    kw = dict(model="tiny", messages=ask("Pick words"), max_tokens=10, temperature=1.0, seed=1234)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    c = client.chat.completions.create(**{**kw, "seed": 99}).choices[0].message.content
    assert a == b
    assert a != c


def test_unknown_model_name_is_served_by_the_loaded_model(client, tiny_stack):
    resp = client.chat.completions.create(model="gpt-4o", messages=ask("Hi"), max_tokens=2, **GREEDY)
    assert resp.model == tiny_stack_model_id(tiny_stack)


@pytest.mark.parametrize(
    "body, param",
    [
        ("{not json", None),
        ("[1, 2]", None),
        ('{"messages": []}', "messages"),
        ('{"messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        ('{"messages": [{"role": "user", "content": "x"}], "max_tokens": -3}', "max_tokens"),
        ('{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        ('{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000000}', "max_tokens"),
        ('{"messages": [{"role": "user", "content": "x"}], "temperature": "warm"}', "temperature"),
        ('{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        ('{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        ('{"messages": [{"role": "user", "content": [{"type": "audio"}]}]}', "messages[0].content[0]"),
        ('{"messages": [{"role": "user", "content": "x"}], "conversation": "../../etc/passwd"}', "conversation"),
        ('{"messages": [{"role": "user", "content": "x"}], "conversation": "a\\u0000b"}', "conversation"),
        ('{"messages": [{"role": "user", "content": "x"}], "conversation": "%2e%2e"}', "conversation"),
        ('{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}', "messages[0].content[0]"),
    ],
)
def test_bad_requests_get_openai_shaped_400s(tiny_stack, body, param):
    r = httpx.post(f"{tiny_stack.base_url}/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["message"]
    assert err["param"] == param


def test_prompt_longer_than_context_is_a_400(tiny_stack):
    info = httpx.get(f"{tiny_stack.root_url}/health").json()
    context = info["workers"][0]["context_length"]
    long = "word " * (context + 100)
    r = httpx.post(f"{tiny_stack.base_url}/chat/completions", json={"messages": ask(long), "max_tokens": 5}, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_routes_and_methods_are_openai_shaped(tiny_stack):
    r = httpx.get(f"{tiny_stack.root_url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = httpx.delete(f"{tiny_stack.base_url}/models")
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_worker_keeps_serving_after_bad_input(client):
    resp = client.chat.completions.create(model="tiny", messages=ask("Still there?"), max_tokens=3, **GREEDY)
    assert resp.usage.completion_tokens == 3


@pytest.mark.parametrize(
    "body",
    [
        # found by schemathesis: values JSON allows but MessagePack cannot carry
        '{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"maximum": 113106540663023072224215040}}}]}',
        '{"messages": [{"role": "user", "content": "x\\udb4c"}]}',
    ],
)
def test_unencodable_values_are_a_400_not_a_500(tiny_stack, body):
    r = httpx.post(f"{tiny_stack.base_url}/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_value"
