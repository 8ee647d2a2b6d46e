"""Anthropic Messages on the wire: the ``message`` object and its stream.

``MessagesReply`` is the Messages API's ``Reply`` (gateway/dispatch.py).
A stream is Anthropic's exact sequence: ``message_start``; per content
block ``content_block_start``, its deltas (``thinking_delta``,
``text_delta``), ``content_block_stop``; ``message_delta`` (stop reason,
usage); ``message_stop``. ``ping`` keeps an idle stream alive; a failure
after the start is an ``error`` event.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec

from protocol.messages import RequestOutput, Usage

from .dispatch import Admitted
from .errors import APIError

_json = msgspec.json.Encoder()


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _json.encode({"type": kind, **data}) + b"\n\n"


def stop_reason(final: RequestOutput) -> str:
    if final.finish_reason == "length":
        return "max_tokens"
    if final.finish_reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if final.stop_sequence is not None else "end_turn"


def usage_json(u: Usage, *, output_tokens: int | None = None) -> dict[str, Any]:
    """Anthropic counts prompt tokens read from a cache apart from the rest:
    ``input_tokens`` + ``cache_read_input_tokens`` is the whole prompt."""
    return {
        "input_tokens": u.prompt_tokens - u.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u.cached_tokens,
        "output_tokens": u.completion_tokens if output_tokens is None else output_tokens,
    }


def _started_usage(first: RequestOutput) -> Usage:
    cached = first.started.cached_tokens if first.started else 0
    return Usage(prompt_tokens=first.prompt_tokens, cached_tokens=cached)


def _blocks(text: str, thinking: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if thinking:
        blocks.append({"type": "thinking", "thinking": thinking, "signature": ""})
    if text or not blocks:  # an empty answer is one empty text block, streamed or not
        blocks.append({"type": "text", "text": text})
    return blocks


class MessagesReply:
    """The Messages API's view of one generation (a ``dispatch.Reply``)."""

    def __init__(self, admitted: Admitted):
        self.admitted = admitted
        self._index = -1  # the open content block, -1 before the first
        self._open: str | None = None  # its kind: "thinking" | "text"

    def _message(self, content: list[dict[str, Any]], final: RequestOutput | None, usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.admitted.request_id,
            "type": "message",
            "role": "assistant",
            "model": self.admitted.model,
            "content": content,
            "stop_reason": stop_reason(final) if final else None,
            "stop_sequence": final.stop_sequence if final else None,
            "usage": usage,
        }

    # -- streaming -------------------------------------------------------- #
    def open(self) -> Iterable[bytes]:
        usage = usage_json(_started_usage(self.admitted.first), output_tokens=0)
        yield event("message_start", {"message": self._message([], None, usage)})
        yield event("ping", {})

    def _switch(self, kind: str) -> Iterable[bytes]:
        if self._open == kind:
            return
        yield from self._close_block()
        self._index += 1
        self._open = kind
        block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
        yield event("content_block_start", {"index": self._index, "content_block": block})

    def _close_block(self) -> Iterable[bytes]:
        if self._open is not None:
            yield event("content_block_stop", {"index": self._index})
            self._open = None

    def delta(self, outs: list[RequestOutput]) -> Iterable[bytes]:
        # Runs of the same kind merge into one delta; the order is kept.
        runs: list[tuple[str, str]] = []
        for out in outs:
            for kind, text in (("thinking", out.reasoning), ("text", out.content)):
                if not text:
                    continue
                if runs and runs[-1][0] == kind:
                    runs[-1] = (kind, runs[-1][1] + text)
                else:
                    runs.append((kind, text))
        for kind, text in runs:
            yield from self._switch(kind)
            delta = {"type": "thinking_delta", "thinking": text} if kind == "thinking" else {"type": "text_delta", "text": text}
            yield event("content_block_delta", {"index": self._index, "delta": delta})

    def close(self, final: RequestOutput) -> Iterable[bytes]:
        if self._index < 0:
            yield from self._switch("text")
        yield from self._close_block()
        usage = usage_json(final.usage or Usage())
        delta = {"stop_reason": stop_reason(final), "stop_sequence": final.stop_sequence}
        yield event("message_delta", {"delta": delta, "usage": usage})
        yield event("message_stop", {})

    def fail(self, err: APIError) -> Iterable[bytes]:
        body = err.anthropic_body()
        yield event("error", {"error": body["error"]})

    def keep_alive(self) -> bytes:
        return event("ping", {})

    # -- one body --------------------------------------------------------- #
    def body(self, outs: list[RequestOutput]) -> dict[str, Any]:
        text = "".join(o.content for o in outs)
        thinking = "".join(o.reasoning for o in outs)
        final = outs[-1]
        return self._message(_blocks(text, thinking), final, usage_json(final.usage or Usage()))


class CountTokensReply(MessagesReply):
    """``/v1/messages/count_tokens``: the prompt's size, from a
    ``max_tokens=0`` request (rendered exactly as a generation would be)."""

    def body(self, outs: list[RequestOutput]) -> dict[str, Any]:
        u = outs[-1].usage or Usage()
        return {"input_tokens": u.prompt_tokens}
