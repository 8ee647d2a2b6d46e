"""Media URLs may not reach the server's own network unless allowed (SSRF)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.url_guard import BlockedURL, ensure_public


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x.png",
        "http://localhost/x.png",
        "http://10.1.2.3/x.png",
        "http://192.168.0.10/x.png",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://[::1]/x.png",
        "http://0.0.0.0/x.png",
        "file:///etc/passwd",
        "ftp://example.com/x.png",
    ],
)
def test_private_and_odd_urls_are_blocked(url):
    with pytest.raises(BlockedURL):
        asyncio.run(ensure_public(url))


def test_public_address_passes():
    asyncio.run(ensure_public("http://93.184.215.14/x.png"))  # an IP literal: no DNS needed


def test_gateway_refuses_loopback_media_by_default(tiny_vlm_path, media_server, make_stack):
    stack = make_stack(tiny_vlm_path)  # no --allow-private-media-urls
    body = {
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe"},
            {"type": "image_url", "image_url": {"url": f"{media_server.url}/red.png"}},
        ]}],
        "max_tokens": 2,
    }
    r = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=60)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "media_url_blocked" and err["param"] == "messages[0].content[1]"
