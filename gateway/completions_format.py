"""Legacy completions on the wire: `text_completion` objects and chunks.

``CompletionReply`` is the legacy API's ``Reply`` (gateway/dispatch.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from protocol.messages import RequestOutput, Usage

from .chat_format import ChunkWriter, finish_reason, usage_json
from .dispatch import Admitted, joined_text
from .errors import APIError

_json = msgspec.json.Encoder()


class CompletionReply:
    """One completion choice, streamed or whole. ``echo``: the prompt text,
    put before the generated text."""

    def __init__(self, admitted: Admitted, *, echo: str = "", include_usage: bool = False):
        self.admitted = admitted
        self.echo = echo
        self.include_usage = include_usage
        self._head = {"id": admitted.request_id, "object": "text_completion", "created": admitted.created, "model": admitted.model}

    def _chunk(self, text: str, reason: str | None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return b"data: " + _json.encode({**self._head, "choices": [choice]}) + b"\n\n"

    def open(self) -> Iterable[bytes]:
        if self.echo:
            yield self._chunk(self.echo, None)

    def delta(self, outs: list[RequestOutput]) -> Iterable[bytes]:
        text, _ = joined_text(outs)
        if text:
            yield self._chunk(text, None)

    def close(self, final: RequestOutput) -> Iterable[bytes]:
        yield self._chunk("", finish_reason(final))
        if self.include_usage:
            usage = usage_json(final.usage or Usage())
            yield b"data: " + _json.encode({**self._head, "choices": [], "usage": usage}) + b"\n\n"
        yield ChunkWriter.done()

    def fail(self, err: APIError) -> Iterable[bytes]:
        yield ChunkWriter.error(err.body())
        yield ChunkWriter.done()

    def keep_alive(self) -> bytes:
        return ChunkWriter.keep_alive()

    def body(self, outs: list[RequestOutput]) -> dict[str, Any]:
        text, _ = joined_text(outs)
        final = outs[-1]
        choice = {"index": 0, "text": self.echo + text, "logprobs": None, "finish_reason": finish_reason(final)}
        return {**self._head, "choices": [choice], "usage": usage_json(final.usage or Usage())}
