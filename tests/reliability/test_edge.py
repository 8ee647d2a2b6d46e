"""The gateway's edge through real processes: what used to be 500s on input,
probes with HEAD, 405 with its Allow header, and what a save tells a client."""

from __future__ import annotations

import httpx
import pytest

from tests.reliability.support import chat, client, conv_kv

DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize("path, body", [
    ("/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "tools": [{"x": %s}]}' % DEEP),
    ("/chat/completions", '{"messages": [{"role": "user", "content": %s}]}' % DEEP),
    ("/conv_kv/save", '{"conversation": "c", "x": %s}' % DEEP),
    ("/conv_kv/load", '{"conversation": %s}' % DEEP),
    ("/conv_kv/save", '{"conversation": "edge-title", "title": "\\ud800"}'),
    ("/chat/completions", '{"messages": [{"role": "user", "content": "\\udfff"}]}'),
])
def test_hostile_json_is_a_400_not_a_500(tiny_stack, path, body):
    r = client().post(f"{tiny_stack.base_url}{path}", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] in ("json_too_deep", "invalid_value")


def test_head_health_for_load_balancers(tiny_stack):
    r = httpx.head(f"{tiny_stack.root_url}/health", timeout=10)
    assert r.status_code == 200 and r.content == b""
    assert client().get(f"{tiny_stack.root_url}/health").json()["status"] == "ok"


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/v1/chat/completions", {"POST"}),
    ("PUT", "/health", {"GET", "HEAD"}),
    ("POST", "/v1/models", {"GET"}),
])
def test_405_says_which_methods_are_allowed(tiny_stack, method, path, allowed):
    r = client().request(method, f"{tiny_stack.root_url}{path}")
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_save_does_not_reveal_the_servers_paths(tiny_stack):
    assert chat(tiny_stack, "Hello", "edge-path").status_code == 200
    r = conv_kv(tiny_stack, "save", "edge-path", title="a title")
    assert r.status_code == 200, r.text
    path = r.json()["path"]
    assert "/" not in path and path.endswith(".safetensors") and path.startswith("edge-path-")
