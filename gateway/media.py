"""Images and video in chat requests: fetch, check, forward (docs/vision.md).

The gateway resolves every media reference to bytes — ``data:`` URLs
(decoded), ``http(s)`` URLs (fetched with a total timeout and the
``--max-image-mb`` size cap) and, only under ``--allow-local-media DIR``,
server-local paths — and checks the header (is it an image / a video, how
big). A bad image is a 400 here, before any worker is involved. What goes
to the worker is the original compressed bytes as a base64 ``data:`` URL:
the worker decodes and downscales them on its media thread. Measured on a
1-MP JPEG (docs/vision.md): the header check costs ~0.3 ms, a full decode
~11 ms and would have to happen again in the worker unless raw pixels
(8.6x the bytes) crossed the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlparse

from . import compat
from .errors import APIError
from .url_guard import BlockedURL, ensure_public

MEDIA_PART_TYPES = ("image_url", "input_image", "video_url")


@dataclass
class MediaConfig:
    allow_local_dirs: list[Path] = field(default_factory=list)  # empty: no server-local paths at all
    fetch_timeout: float = 10.0  # seconds for a whole http(s) fetch
    max_source_pixels: int = 64_000_000  # refuse bigger images up front (decompression bombs)
    allow_private_urls: bool = False  # fetch URLs on loopback / private networks (SSRF risk)


def add_media_arguments(p: argparse.ArgumentParser) -> None:
    d = MediaConfig()  # every default comes from here
    g = p.add_argument_group("images and video (docs/vision.md)")
    g.add_argument("--allow-local-media", action="append", dest="allow_local_media", metavar="DIR", default=None,
                   help="let requests name image/video files under DIR on this host (repeatable); default: no local paths")
    g.add_argument("--media-fetch-timeout", type=float, default=d.fetch_timeout,
                   help="seconds an http(s) image or video fetch may take in total (400 past it)")
    g.add_argument("--allow-private-media-urls", action="store_true",
                   help="let http(s) media URLs reach loopback and private networks (off: only public addresses)")
    g.add_argument("--max-image-megapixels", type=float, default=d.max_source_pixels / 1_000_000,
                   help="refuse images larger than this before any decoding (the worker downscales the rest)")


def media_config_from_args(args: argparse.Namespace) -> MediaConfig:
    return MediaConfig(
        allow_local_dirs=[Path(d).expanduser().resolve() for d in (args.allow_local_media or [])],
        fetch_timeout=max(0.1, args.media_fetch_timeout),
        max_source_pixels=max(1, int(args.max_image_megapixels * 1_000_000)),
        allow_private_urls=args.allow_private_media_urls,
    )


def media_params(messages: list[dict[str, Any]], names: dict[tuple[int, int], str] | None = None) -> list[str]:
    """The client's name (``messages[i].content[j]`` or ``images[k]``) of
    every media part, in order."""
    out = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, list):
            out += [_name(names, i, j) for j, p in enumerate(content) if p.get("type") in MEDIA_PART_TYPES]
    return out


def _name(names: dict[tuple[int, int], str] | None, i: int, j: int) -> str:
    return (names or {}).get((i, j)) or f"messages[{i}].content[{j}]"


def check_vision_capable(capabilities: list[list[str]], model_id: str, params: list[str]) -> None:
    """Refuse media for a model none of whose known workers is a VLM.
    ``capabilities``: one list per worker of that model (empty: none known,
    so the worker decides)."""
    if params and capabilities and not any("vision" in c for c in capabilities):
        raise APIError(400, f"model {model_id} does not accept images or video", param=params[0],
                       code="unsupported_content")


async def resolve_media(
    messages: list[dict[str, Any]],
    config: MediaConfig,
    *,
    max_bytes: int,
    names: dict[tuple[int, int], str] | None = None,
) -> list[dict[str, Any]]:
    """Replace every media URL with a checked base64 ``data:`` URL (fetched
    concurrently). Raises APIError (4xx) naming the part."""
    jobs = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type")
            if kind in MEDIA_PART_TYPES:
                jobs.append(_resolve_part(part, kind, _name(names, i, j), config, max_bytes))
    if jobs:
        await asyncio.gather(*jobs)
    return messages


async def _resolve_part(part: dict[str, Any], kind: str, param: str, config: MediaConfig, max_bytes: int) -> None:
    ref = part.get(kind)
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise APIError(400, f"{param}: missing url", param=param, code="invalid_image_url")
    video = kind == "video_url"
    if url.startswith("data:"):
        data = await asyncio.to_thread(_data_url_bytes, url, param)
    elif url.lower().startswith(("http://", "https://")):
        data = await _fetch(url, param, config, max_bytes)
    else:
        data = await asyncio.to_thread(_read_local, url, param, config, max_bytes)
    if max_bytes and len(data) > max_bytes:
        raise APIError(413, f"{param}: media is {len(data)} bytes; the limit is {max_bytes}", param=param,
                       code="image_too_large")
    mime = await asyncio.to_thread(_check_video if video else _check_image, data, param, config)
    if url.startswith("data:") and ";base64," in url[:200]:
        new_url = url  # already what the worker wants: don't re-encode
    else:
        new_url = f"data:{mime};base64," + (await asyncio.to_thread(base64.b64encode, data)).decode("ascii")
    part[kind] = {**ref, "url": new_url} if isinstance(ref, dict) else {"url": new_url}


def _data_url_bytes(url: str, param: str) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep:
        raise APIError(400, f"{param}: malformed data URL", param=param, code="invalid_image_url")
    try:
        if head.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param}: the data URL is not valid base64", param=param, code="invalid_image_url") from None


async def _fetch(url: str, param: str, config: MediaConfig, max_bytes: int) -> bytes:
    import httpx

    async def get() -> bytes:
        async with httpx.AsyncClient(follow_redirects=False, timeout=config.fetch_timeout) as client:
            target = url
            for _hop in range(4):  # redirects are followed by hand so that every hop is checked
                if not config.allow_private_urls:
                    try:
                        await ensure_public(target)
                    except BlockedURL as exc:
                        raise APIError(400, f"{param}: {exc}", param=param, code="media_url_blocked") from None
                async with client.stream("GET", target) as resp:
                    if resp.is_redirect and "location" in resp.headers:
                        target = str(resp.url.join(resp.headers["location"]))
                        continue
                    return await _read_capped(resp, url, param, max_bytes)
            raise APIError(400, f"{param}: too many redirects fetching {url}", param=param, code="media_fetch_failed")

    try:
        return await asyncio.wait_for(get(), config.fetch_timeout)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        raise APIError(400, f"{param}: fetching {url} timed out after {config.fetch_timeout:g} s", param=param,
                       code="media_fetch_timeout") from None
    except httpx.HTTPError as exc:
        raise APIError(400, f"{param}: could not fetch {url}: {exc or type(exc).__name__}", param=param,
                       code="media_fetch_failed") from None


async def _read_capped(resp: Any, url: str, param: str, max_bytes: int) -> bytes:
    if resp.status_code != 200:
        raise APIError(400, f"{param}: fetching {url} answered HTTP {resp.status_code}", param=param, code="media_fetch_failed")
    declared = resp.headers.get("content-length", "")
    if max_bytes and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(param, int(declared), max_bytes)
    chunks, size = [], 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if max_bytes and size > max_bytes:  # a lying or absent Content-Length
            raise _too_large(param, size, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(param: str, size: int, max_bytes: int) -> APIError:
    return APIError(413, f"{param}: media is over {max_bytes} bytes (at least {size})", param=param,
                    code="image_too_large")


def _read_local(ref: str, param: str, config: MediaConfig, max_bytes: int) -> bytes:
    """A file under an allowed directory (symlinks resolved first, so a link
    cannot point out of it)."""
    if ref.startswith("file://"):
        parsed = urlparse(ref)
        raw = unquote(parsed.path)
    elif ref.startswith("/"):
        raw = ref
    else:
        raise APIError(400, f"{param}: media must be a data: URL, an http(s) URL or an absolute local path",
                       param=param, code="invalid_image_url")
    if not config.allow_local_dirs:
        raise APIError(400, f"{param}: local media paths are not allowed on this server (see --allow-local-media)",
                       param=param, code="invalid_image_url")
    path = Path(os.path.realpath(raw))
    if not any(path.is_relative_to(d) for d in config.allow_local_dirs):
        raise APIError(400, f"{param}: {raw} is outside the directories this server allows media from",
                       param=param, code="local_media_forbidden")
    try:
        if not path.is_file():
            raise APIError(400, f"{param}: {raw} is not a file", param=param, code="invalid_image_url")
        if max_bytes and path.stat().st_size > max_bytes:
            raise _too_large(param, path.stat().st_size, max_bytes)
        return path.read_bytes()
    except OSError as exc:
        raise APIError(400, f"{param}: cannot read {raw}: {exc.strerror}", param=param, code="invalid_image_url") from None


def _check_image(data: bytes, param: str, config: MediaConfig) -> str:
    """Header-level check (~0.3 ms): a format Pillow reads, a sane size. The
    worker's full decode catches what a header cannot (a truncated body)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
            img.verify()  # cheap structural checks (PNG chunk CRCs, ...)
    except UnidentifiedImageError:
        raise APIError(400, f"{param}: the data is not an image format this server can read", param=param,
                       code="invalid_image") from None
    except Image.DecompressionBombError:
        raise _pixels_error(param, None, config) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise APIError(400, f"{param}: the image is corrupt: {exc}", param=param, code="invalid_image") from None
    if w * h > config.max_source_pixels:
        raise _pixels_error(param, (w, h), config)
    return Image.MIME.get(fmt or "", "application/octet-stream")


def _pixels_error(param: str, size: tuple[int, int] | None, config: MediaConfig) -> APIError:
    what = f"{size[0]}x{size[1]} pixels" if size else "too many pixels"
    return APIError(400, f"{param}: the image is {what}; the limit is {config.max_source_pixels} pixels",
                    param=param, code="image_too_large")


def _check_video(data: bytes, param: str, config: MediaConfig) -> str:
    """Open the container and find a video stream (no frame is decoded)."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise APIError(400, f"{param}: the file has no video stream", param=param, code="invalid_video")
            stream = container.streams.video[0]
            if stream.codec_context is None:  # e.g. an SVG: FFmpeg sees a "video" it has no decoder for
                raise APIError(400, f"{param}: the file has no video stream this server can decode ({container.format.name})",
                               param=param, code="invalid_video")
            w, h = stream.codec_context.width, stream.codec_context.height
            fmt = (container.format.name or "").split(",")[0]
    except APIError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise APIError(400, f"{param}: the data is not a video this server can read ({exc})", param=param,
                       code="invalid_video") from None
    if w * h > config.max_source_pixels:
        raise APIError(400, f"{param}: video frames are {w}x{h}; the limit is {config.max_source_pixels} pixels",
                       param=param, code="video_too_large")
    return f"video/{fmt or 'octet-stream'}"


async def wire_messages_with_media(
    pool: Any, body: Any, config: Any, *, names: dict[tuple[int, int], str] | None = None,
) -> list[dict[str, Any]]:
    """``body.wire_messages()`` with every media reference checked and turned
    into a data URL; media sent to a text-only model is refused first,
    before anything is fetched. ``names``: the client's names of message
    parts, when its API is not chat."""
    messages = body.wire_messages()
    names = {**compat.top_level_image_names(body), **(names or {})}
    params = media_params(messages, names)
    if not params:
        return messages
    from .pool import NoWorkerAvailable, UnknownModel

    try:
        model_id = pool.resolve_model(body.model)
    except (NoWorkerAvailable, UnknownModel):
        model_id = None  # routing answers 503 or 404 next; nothing to check against
    if model_id is not None:
        # Capabilities are known once a model has been loaded (none yet: the worker decides).
        caps = [list(m.capabilities) for w in pool.workers for m in w.models() if m.id == model_id and m.capabilities]
        check_vision_capable(caps, model_id, params)
    return await resolve_media(messages, config.media, max_bytes=config.ops.max_image_bytes, names=names)
