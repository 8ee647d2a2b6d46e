"""POST /tokenize and /detokenize (vLLM's shape), answered by the worker."""

from __future__ import annotations

import httpx

from tests.agents.conftest import sdk


def test_tokenize_round_trip_and_ids_usable_for_logit_bias(tiny_stack):
    url = tiny_stack.root_url
    r = httpx.post(f"{url}/tokenize", json={"model": "m", "prompt": "hello world"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) > 0 and body["max_model_len"] > 0
    back = httpx.post(f"{url}/detokenize", json={"model": "m", "tokens": body["tokens"]}, timeout=30).json()
    assert back == {"prompt": "hello world"}
    x = httpx.post(f"{url}/tokenize", json={"prompt": "x"}, timeout=30).json()["tokens"]
    assert len(x) == 1
    out = sdk(tiny_stack).chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                                  temperature=0, logit_bias={str(x[0]): 50})
    assert out.choices[0].message.content == "xxxx"


def test_tokenize_messages_counts_what_generation_uses(tiny_stack):
    msgs = [{"role": "user", "content": "How long is this prompt?"}]
    counted = httpx.post(f"{tiny_stack.root_url}/tokenize", json={"messages": msgs}, timeout=30).json()["count"]
    used = sdk(tiny_stack).chat.completions.create(model="m", messages=msgs, max_tokens=1).usage.prompt_tokens
    assert counted == used
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    with_tools = httpx.post(f"{tiny_stack.root_url}/tokenize", json={"messages": msgs, "tools": tools}, timeout=30).json()["count"]
    assert with_tools == sdk(tiny_stack).chat.completions.create(model="m", messages=msgs, tools=tools, max_tokens=1).usage.prompt_tokens
    assert with_tools > counted


def test_bad_tokenize_requests_are_400s(tiny_stack):
    url = tiny_stack.root_url
    cases = [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt"),
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
    ]
    for path, body, param in cases:
        r = httpx.post(f"{url}{path}", json=body, timeout=30)
        assert r.status_code == 400, (path, body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.json())
