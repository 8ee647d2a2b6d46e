"""`image:` tokens in what people type -> OpenAI content parts.

    image:/path/a.png Describe this
    image:"~/My Pictures/b.jpg" image:c.webp compare them
    image:/path/with\\ spaces.png what is it?     (shell-style escapes, as
                                                  terminals paste dropped files)

The client reads each file and sends its bytes as a data URL: the server
never opens client paths (kamiwaza-mlx's client sent paths for the server to open).
"""

from __future__ import annotations

import base64
import mimetypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.errors import AttachmentError

PREFIX = "image:"
MAX_IMAGE_BYTES = 32 * 1024 * 1024  # far above any sane photo; stops accidents

# image: at the start or after whitespace (so "foo:image:x" is plain text),
# directly followed by the path: "image: nginx" (YAML, prose) stays text.
_TOKEN = re.compile(r"(?:(?<=\s)|^)image:(?=\S)", re.IGNORECASE)

_MAGIC: list[tuple[bytes, int, str]] = [
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
]


@dataclass
class ParsedInput:
    """The prompt text with `image:` tokens removed, and the image specs."""

    text: str
    images: list[str] = field(default_factory=list)


def parse_input(line: str) -> ParsedInput:
    """Split `image:` tokens out of a line. Pure: touches the filesystem only
    to resolve unquoted paths that contain spaces (see `_read_unquoted`)."""
    out: list[str] = []
    images: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(line):
        if m.start() < pos:
            continue  # inside a path we already consumed
        out.append(line[pos : m.start()])
        spec, pos = _read_spec(line, m.end())
        if not spec:
            raise AttachmentError('empty image path; write image:~/cat.png or image:"~/My Pictures/cat.png"')
        images.append(spec)
    out.append(line[pos:])
    text = re.sub(r"[ \t]{2,}", " ", "".join(out)).strip()
    return ParsedInput(text=text, images=images)


def _read_spec(line: str, start: int) -> tuple[str, int]:
    """Read the path after `image:`; return (spec, index after it)."""
    if start < len(line) and line[start] in "\"'":
        quote = line[start]
        buf: list[str] = []
        i = start + 1
        while i < len(line):
            ch = line[i]
            if ch == "\\" and quote == '"' and i + 1 < len(line) and line[i + 1] in '"\\':
                buf.append(line[i + 1])
                i += 2
                continue
            if ch == quote:
                return "".join(buf), i + 1
            buf.append(ch)
            i += 1
        raise AttachmentError(f"unclosed quote in image path: {line[start:]!r}")
    return _read_unquoted(line, start)


def _read_unquoted(line: str, start: int) -> tuple[str, int]:
    buf: list[str] = []
    i = start
    while i < len(line) and not line[i].isspace():
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in " \\'\"()&":
            buf.append(line[i + 1])  # shell-style escape, e.g. a dropped file
            i += 2
            continue
        buf.append(line[i])
        i += 1
    spec = "".join(buf)
    # A path with unescaped spaces ("image:~/My Pictures/a.png hi"): if the
    # first word is not a file, take the shortest run of words that is one.
    if spec and not _is_url(spec) and not _expand(spec).exists():
        j = i
        while j < len(line):
            nxt = j
            while nxt < len(line) and line[nxt].isspace():
                nxt += 1
            end = nxt
            while end < len(line) and not line[end].isspace():
                end += 1
            if end == nxt:
                break
            candidate = spec + line[i:end]
            if _expand(candidate).is_file():
                return candidate, end
            j = end
    return spec, i


def _is_url(spec: str) -> bool:
    return spec.lower().startswith(("http://", "https://", "data:"))


def _expand(spec: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(spec)))


def sniff_mime(data: bytes, name: str = "") -> str | None:
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    guess, _ = mimetypes.guess_type(name)
    return guess if guess and guess.startswith("image/") else None


def load_image(spec: str) -> str:
    """An `image:` spec -> a URL for an image_url part (data URL for files)."""
    if _is_url(spec):
        return spec
    path = _expand(spec)
    shown = spec if str(path) == spec else f"{spec} ({path})"
    if not path.exists():
        raise AttachmentError(f"image not found: {shown}")
    if path.is_dir():
        raise AttachmentError(f"image path is a folder, not a file: {shown}")
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise AttachmentError(
                f"image too large: {shown} is {size / 2**20:.1f} MiB (limit {MAX_IMAGE_BYTES // 2**20} MiB)"
            )
        data = path.read_bytes()
    except PermissionError:
        raise AttachmentError(f"no permission to read image: {shown}") from None
    except OSError as exc:
        raise AttachmentError(f"cannot read image {shown}: {exc.strerror or exc}") from None
    mime = sniff_mime(data, path.name)
    if mime is None:
        raise AttachmentError(f"not an image (PNG, JPEG, GIF, WebP, BMP or TIFF expected): {shown}")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def build_content(parsed: ParsedInput) -> str | list[dict[str, Any]]:
    """Plain string without images (what every server accepts); otherwise
    image parts first, then the text (the order VLM chat templates expect)."""
    if not parsed.images:
        return parsed.text
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": load_image(spec)}} for spec in parsed.images
    ]
    if parsed.text:
        parts.append({"type": "text", "text": parsed.text})
    return parts
