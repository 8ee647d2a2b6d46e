"""Legacy completions on the wire: `text_completion` objects and chunks.

``CompletionReply`` is the legacy API's ``Reply`` (gateway/dispatch.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from protocol.messages import RequestOutput, TokenLogprob, Usage

from .chat_format import ChunkWriter, by_choice, choice_reason, finish_reason, openai_reason, usage_json
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
    """The choices of one completion, streamed or whole. ``echo``: the
    prompt text, put before each choice's text. With ``n`` > 1 each choice's
    end arrives as ``choice_finish_reason``."""

    def __init__(self, admitted: Admitted, *, echo: str = "", include_usage: bool = False, n: int = 1):
        self.admitted = admitted
        self.echo = echo
        self.include_usage = include_usage
        self.n = n
        self._head = {"id": admitted.request_id, "object": "text_completion", "created": admitted.created, "model": admitted.model}
        self.logprobs = [LegacyLogprobs(len(echo)) for _ in range(n)]  # offsets run on per choice

    def _chunk(self, text: str, reason: str | None, logprobs: dict[str, Any] | None = None, index: int = 0) -> bytes:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
        return b"data: " + _json.encode({**self._head, "choices": [choice]}) + b"\n\n"

    def open(self) -> Iterable[bytes]:
        if self.echo:
            for index in range(self.n):
                yield self._chunk(self.echo, None, index=index)

    def delta(self, outs: list[RequestOutput]) -> Iterable[bytes]:
        for index, group in by_choice(outs).items():
            text, _ = joined_text(group)
            logprobs = self.logprobs[index].of(group)
            if text or logprobs:
                yield self._chunk(text, None, logprobs, index)
            ended = [o.choice_finish_reason for o in group if o.choice_finish_reason]
            if self.n > 1 and ended:
                yield self._chunk("", openai_reason(ended[-1]), index=index)

    def close(self, final: RequestOutput) -> Iterable[bytes]:
        if self.n == 1:
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
        final = outs[-1]
        groups = by_choice(outs)
        choices = []
        for index in range(self.n):
            group = groups.get(index, [])
            text, _ = joined_text(group) if group else ("", "")
            choices.append({"index": index, "text": self.echo + text, "logprobs": self.logprobs[index].of(group),
                            "finish_reason": choice_reason(final, group, self.n)})
        return {**self._head, "choices": choices, "usage": usage_json(final.usage or Usage())}
