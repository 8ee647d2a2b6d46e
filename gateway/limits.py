"""Per-request content limits: message count, image count, image size.

The body-size cap (``security.py``) bounds a request as bytes; these bound
what it asks the worker to do, with messages that name the field. Images
must arrive as ``data:`` or ``http(s)`` URLs: nothing a client sends may
name a file on the server (a ``file:`` URL or a bare path is refused) unless
the operator allowed a directory (``--allow-local-media``, ``media.py``).
Remote images have no size here; whoever fetches them must cap the download.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .errors import APIError
from .ops_config import OpsConfig
from .schemas import ChatCompletionRequest

_REMOTE = ("http://", "https://")


def check_request_limits(
    body: ChatCompletionRequest, ops: OpsConfig, *, allow_local_media: bool = False, names: dict[tuple[int, int], str] | None = None,
) -> None:
    """Raise an OpenAI-shaped APIError if ``body`` exceeds a configured limit.
    ``names``: the client's names of message parts, when its API is not chat."""
    if ops.max_messages and len(body.messages) > ops.max_messages:
        raise APIError(400, f"at most {ops.max_messages} messages per request (got {len(body.messages)})",
                       param="messages", code="too_many_messages")
    media = list(_media_urls(body, names or {}))
    if ops.max_images and len(media) > ops.max_images:
        raise APIError(400, f"at most {ops.max_images} images or videos per request (got {len(media)})",
                       param="messages", code="too_many_images")
    for param, url in media:
        if url.startswith("data:"):
            size = data_url_size(url)
            if size is None:
                raise APIError(400, f"{param}: malformed data URL", param=param, code="invalid_image_url")
            if ops.max_image_bytes and size > ops.max_image_bytes:
                raise APIError(413, f"{param}: image is {size} bytes; the limit is {ops.max_image_bytes}",
                               param=param, code="image_too_large")
        elif not url.lower().startswith(_REMOTE) and not allow_local_media:  # else media.py checks the directory
            raise APIError(400, f"{param}: images must be data: or http(s) URLs", param=param, code="invalid_image_url")


def _media_urls(body: ChatCompletionRequest, names: dict[tuple[int, int], str]) -> Iterator[tuple[str, str]]:
    for i, m in enumerate(body.messages):
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                ref: Any = getattr(part, "image_url", None) or getattr(part, "video_url", None)
                if ref is not None:
                    yield names.get((i, j)) or f"messages[{i}].content[{j}]", ref.url
    for k, url in enumerate(body.images or []):
        yield f"images[{k}]", url


def data_url_size(url: str) -> int | None:
    """Decoded byte size of a data URL, computed without decoding it."""
    head, sep, payload = url.partition(",")
    if not sep:
        return None
    if head.endswith(";base64"):
        n = len(payload.rstrip("="))
        return n * 3 // 4
    # Percent-encoded text: every %XX is one byte.
    return len(payload) - 2 * payload.count("%")
