"""Legacy completions on the wire: `text_completion` objects and chunks.

``CompletionReply`` is the legacy API's ``Reply`` (gateway/dispatch.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from protocol.messages import RequestOutput, TokenLogprob, Usage

from .chat_format import ChunkWriter, finish_reason, usage_json
from .dispatch import Admitted, joined_text
from .errors import APIError

_json = msgspec.json.Encoder()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class LegacyLogprobs:
    """The legacy ``logprobs`` object: tokens, their logprobs, the top
    alternatives, and each token's character offset in the returned text."""

    def __init__(self, start: int):
        self.offset = start

    def of(self, outs: list[RequestOutput]) -> dict[str, Any] | None:
        tokens: list[TokenLogprob] = [t for o in outs if o.logprobs for t in o.logprobs]
        if not tokens:
            return None
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t in tokens:
            text = _text(t.token_bytes)
            out["tokens"].append(text)
            out["token_logprobs"].append(t.logprob)
            out["top_logprobs"].append({_text(a.token_bytes): a.logprob for a in t.top})
            out["text_offset"].append(self.offset)
            self.offset += len(text)
        return out


class CompletionReply:
    """One completion choice, streamed or whole. ``echo``: the prompt text,
    put before the generated text."""

    def __init__(self, admitted: Admitted, *, echo: str = "", include_usage: bool = False):
        self.admitted = admitted
        self.echo = echo
        self.include_usage = include_usage
        self._head = {"id": admitted.request_id, "object": "text_completion", "created": admitted.created, "model": admitted.model}
        self.logprobs = LegacyLogprobs(len(echo))

    def _chunk(self, text: str, reason: str | None, logprobs: dict[str, Any] | None = None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}
        return b"data: " + _json.encode({**self._head, "choices": [choice]}) + b"\n\n"

    def open(self) -> Iterable[bytes]:
        if self.echo:
            yield self._chunk(self.echo, None)

    def delta(self, outs: list[RequestOutput]) -> Iterable[bytes]:
        text, _ = joined_text(outs)
        logprobs = self.logprobs.of(outs)
        if text or logprobs:
            yield self._chunk(text, None, logprobs)

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
        logprobs = self.logprobs.of(outs)
        choice = {"index": 0, "text": self.echo + text, "logprobs": logprobs, "finish_reason": finish_reason(final)}
        return {**self._head, "choices": [choice], "usage": usage_json(final.usage or Usage())}
