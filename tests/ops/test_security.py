"""API key, CORS, body-size cap, content limits and request ids, against a
real gateway + worker (tiny model)."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.support.e2e import starts_processes
from tests.support.processes import start_gateway, wait_healthy

KEY = "test-key-3f9a"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = "http://allowed.example"
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
@starts_processes
def secured(tiny_model_path, log_dir):
    from tests.support.processes import start_stack

    stack = start_stack(
        tiny_model_path,
        log_dir,
        gateway_args=[
            "--api-key", KEY, "--cors-origin", ORIGIN, "--max-body-mb", str(MAX_BODY / 1024 / 1024),
            "--max-messages", "4", "--max-images", "2", "--max-image-mb", str(2048 / 1024 / 1024),
        ],
    )
    yield stack
    stack.stop()


def chat(text: str = "hi", **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 2, **extra}


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    return err


# --------------------------------------------------------------------------- #
# API key
# --------------------------------------------------------------------------- #

ENDPOINTS = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", chat()),
    ("GET", "/v1/conv_kv/stats", None),
    ("GET", "/v1/stats", None),
    ("GET", "/v1/no-such-route", None),
]


@pytest.mark.parametrize("method,path,body", ENDPOINTS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}], ids=["missing", "wrong", "no-scheme"])
def test_requests_without_the_key_get_401(secured, method, path, body, headers):
    r = httpx.request(method, f"{secured.root_url}{path}", json=body, headers=headers, timeout=30)
    err = assert_openai_error(r, 401, "invalid_api_key")
    assert err["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("method,path,body", ENDPOINTS[:4])
def test_requests_with_the_key_succeed(secured, method, path, body):
    r = httpx.request(method, f"{secured.root_url}{path}", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text


def test_health_and_metrics_need_no_key(secured):
    assert httpx.get(f"{secured.root_url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{secured.root_url}/metrics", timeout=10).status_code == 200


def test_anthropic_clients_authenticate_with_x_api_key(secured):
    import anthropic

    good = anthropic.Anthropic(base_url=secured.root_url, api_key=KEY, max_retries=0, timeout=60)
    m = good.messages.create(model="m", max_tokens=2, messages=[{"role": "user", "content": "hi"}],
                             extra_headers={"anthropic-beta": "some-beta-2025-01-01"})
    assert m.usage.output_tokens == 2
    bad = anthropic.Anthropic(base_url=secured.root_url, api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(anthropic.AuthenticationError) as err:
        bad.messages.count_tokens(model="m", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["error"]["type"] == "authentication_error"  # Anthropic's shape under /v1/messages
    r = httpx.get(f"{secured.root_url}/v1/models", headers={"x-api-key": KEY}, timeout=10)
    assert r.status_code == 200


def test_anthropic_errors_from_the_edge_have_anthropics_shape(secured):
    r = httpx.post(f"{secured.root_url}/v1/messages", content=b"x" * (MAX_BODY + 10), headers={"x-api-key": KEY}, timeout=30)
    assert r.status_code == 413 and r.json()["type"] == "error" and r.json()["error"]["type"] == "request_too_large"


def test_key_from_the_environment(secured, log_dir, monkeypatch):
    monkeypatch.setenv("KMLX_API_KEY", "env-key-77")
    gateway, root = start_gateway(secured.worker_addresses, log_dir, name="gateway-envkey")
    try:
        wait_healthy(root, [gateway])
        assert httpx.get(f"{root}/v1/models", timeout=10).status_code == 401
        assert httpx.get(f"{root}/v1/models", headers={"Authorization": "Bearer env-key-77"}, timeout=10).status_code == 200
        assert "env-key-77" not in gateway.log()
    finally:
        assert gateway.stop() == 0


# --------------------------------------------------------------------------- #
# Size and content limits
# --------------------------------------------------------------------------- #


def test_oversized_body_gets_413(secured):
    body = chat("x" * (MAX_BODY + 1000))
    r = httpx.post(f"{secured.base_url}/chat/completions", json=body, headers=AUTH, timeout=30)
    assert_openai_error(r, 413, "request_too_large")


def test_oversized_chunked_body_gets_413(secured):
    def chunks():
        for _ in range(MAX_BODY // 1000 + 5):
            yield b" " * 1000  # JSON whitespace, sent without a Content-Length

    r = httpx.post(f"{secured.base_url}/chat/completions", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    assert_openai_error(r, 413, "request_too_large")


def test_too_many_messages_gets_400(secured):
    body = {"messages": [{"role": "user", "content": "hi"}] * 5, "max_tokens": 2}
    err = assert_openai_error(httpx.post(f"{secured.base_url}/chat/completions", json=body, headers=AUTH, timeout=30), 400, "too_many_messages")
    assert err["param"] == "messages"


def _image(n_bytes: int) -> str:
    return "data:image/png;base64," + base64.b64encode(b"\0" * n_bytes).decode()


def test_too_many_images_gets_400(secured):
    body = chat(images=[_image(10)] * 3)
    assert_openai_error(httpx.post(f"{secured.base_url}/chat/completions", json=body, headers=AUTH, timeout=30), 400, "too_many_images")


def test_too_large_image_gets_413(secured):
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": _image(4096)}}]
    body = {"messages": [{"role": "user", "content": parts}], "max_tokens": 2}
    err = assert_openai_error(httpx.post(f"{secured.base_url}/chat/completions", json=body, headers=AUTH, timeout=30), 413, "image_too_large")
    assert err["param"] == "messages[0].content[1]"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/etc/passwd", "../secret.png"])
def test_image_urls_never_name_server_files(secured, url):
    body = chat(images=[url])
    assert_openai_error(httpx.post(f"{secured.base_url}/chat/completions", json=body, headers=AUTH, timeout=30), 400, "invalid_image_url")


# --------------------------------------------------------------------------- #
# CORS and request ids
# --------------------------------------------------------------------------- #


def test_cors_allows_only_the_configured_origin(secured):
    pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(f"{secured.base_url}/chat/completions", headers=pre, timeout=10)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.get(f"{secured.base_url}/models", headers={"Origin": ORIGIN, **AUTH}, timeout=10)
    assert r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.get(f"{secured.base_url}/models", headers={"Origin": "http://evil.example", **AUTH}, timeout=10)
    assert "access-control-allow-origin" not in r.headers


def test_cors_is_off_by_default(tiny_stack):
    r = httpx.get(f"{tiny_stack.base_url}/models", headers={"Origin": ORIGIN}, timeout=10)
    assert r.status_code == 200
    assert not any(h.startswith("access-control-") for h in r.headers)


def test_request_id_is_echoed_or_made_up(secured):
    r = httpx.get(f"{secured.base_url}/models", headers={**AUTH, "X-Request-Id": "abc-123"}, timeout=10)
    assert r.headers["x-request-id"] == "abc-123"
    too_long = "x" * 200
    r = httpx.get(f"{secured.base_url}/models", headers={**AUTH, "X-Request-Id": too_long}, timeout=10)
    assert r.headers["x-request-id"] not in ("", too_long)
    r = httpx.get(f"{secured.root_url}/health", timeout=10)
    assert r.headers["x-request-id"]
