"""Concurrent streamed chat completions against any OpenAI-compatible server.

The client is asyncio over raw sockets (HTTP/1.1, ``Connection: close``,
chunked or not), one JSON parse per SSE event: cheap enough that 64
streams on a 2-core machine measure the server, not the client. Each
stream records when its first and last content arrived and how many
completion tokens the server counted (``stream_options.include_usage``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Stream:
    sent: float  # perf_counter when the request was written
    first: float | None  # ... when its first content arrived
    last: float | None  # ... when its last content arrived
    done: float  # ... when the response ended
    tokens: int  # completion tokens, as the server counted them
    prompt_tokens: int
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.first - self.sent if self.first is not None else None

    @property
    def decode_tps(self) -> float | None:
        """Decode speed seen by the client: first content to last, over the tokens between."""
        if self.first is None or self.last is None or self.tokens < 2 or self.last <= self.first:
            return None
        return (self.tokens - 1) / (self.last - self.first)


@dataclass
class Load:
    streams: list[Stream]
    seconds: float  # first request sent to last response ended

    @property
    def ok(self) -> list[Stream]:
        return [s for s in self.streams if s.error is None]

    @property
    def errors(self) -> int:
        return len(self.streams) - len(self.ok)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.ok)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.ok)

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def prefill_tps(self) -> float:
        """Prompt tokens per second until the last stream's first token."""
        firsts = [s.first for s in self.ok if s.first is not None]
        if not firsts:
            return 0.0
        return self.prompt_tokens / (max(firsts) - min(s.sent for s in self.streams))


def chat_body(messages: list[dict[str, Any]], max_tokens: int, *, temperature: float = 0.0, **extra: Any) -> dict[str, Any]:
    return {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


async def one_stream(url: str, body: dict[str, Any], *, timeout: float = 900.0) -> Stream:
    """POST ``body`` to ``url`` (…/v1/chat/completions) and read its SSE stream."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sent = time.perf_counter()
    stream = Stream(sent=sent, first=None, last=None, done=sent, tokens=0, prompt_tokens=0)
    try:
        await asyncio.wait_for(_exchange(parts.hostname or "127.0.0.1", parts.port or 80, head + payload, stream), timeout)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    stream.done = time.perf_counter()
    if stream.error is None and stream.tokens == 0:
        stream.error = "no usage in the stream"
    return stream


async def _exchange(host: str, port: int, request: bytes, stream: Stream) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise ValueError(f"HTTP status {status.decode(errors='replace').strip()}")
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            chunked |= name.strip().lower() == "transfer-encoding" and "chunked" in value.lower()
        buffer = b""
        async for data in _body(reader, chunked):
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                _event(raw.strip(), stream)
        _event(buffer.strip(), stream)
    finally:
        writer.close()


async def _body(reader: asyncio.StreamReader, chunked: bool):  # type: ignore[no-untyped-def]
    if not chunked:
        while data := await reader.read(1 << 16):
            yield data
        return
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)  # the chunk's CRLF


def _event(line: bytes, stream: Stream) -> None:
    if not line.startswith(b"data:"):
        return
    data = line[5:].strip()
    if data == b"[DONE]":
        return
    event = json.loads(data)
    if "error" in event:
        raise ValueError(f"error event: {event['error']}")
    usage = event.get("usage")
    if usage:
        stream.tokens = usage.get("completion_tokens", 0)
        stream.prompt_tokens = usage.get("prompt_tokens", 0)
    for choice in event.get("choices") or ():
        if (choice.get("delta") or {}).get("content"):
            now = time.perf_counter()
            stream.first = stream.first or now
            stream.last = now


async def _many(url: str, bodies: list[dict[str, Any]]) -> Load:
    t0 = time.perf_counter()
    streams = await asyncio.gather(*(one_stream(url, b) for b in bodies))
    return Load(list(streams), time.perf_counter() - t0)


def run_load(url: str, bodies: list[dict[str, Any]]) -> Load:
    """Send every body at once; wait for all of them."""
    return asyncio.run(_many(url, bodies))
