"""Anthropic Messages on the wire: the ``message`` object and its stream.

``MessagesReply`` is the Messages API's ``Reply`` (gateway/dispatch.py).
A stream is Anthropic's exact sequence: ``message_start``; per content
block ``content_block_start``, its deltas (``thinking_delta``,
``text_delta``, ``input_json_delta`` for a ``tool_use`` block),
``content_block_stop``; ``message_delta`` (stop reason,
usage); ``message_stop``. ``ping`` keeps an idle stream alive; a failure
after the start is an ``error`` event.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

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
    cached = first.cache_decision.cached_tokens if first.cache_decision else 0
    return Usage(prompt_tokens=first.prompt_tokens, cached_tokens=cached)


def _runs(outs: list[RequestOutput]) -> list[tuple[str, Any, str]]:
    """The outputs as (kind, key, text) runs in order: thinking, text, and
    tool-call pieces (key: the call's index; a call's first piece opens it).
    Consecutive pieces of one run merge."""
    runs: list[tuple[str, Any, str]] = []
    for out in outs:
        pieces: list[tuple[str, Any, str]] = [("thinking", None, out.reasoning), ("text", None, out.content)]
        for call in out.tool_calls or ():
            if call.id is not None:
                pieces.append(("tool_start", (call.index, call.id, call.name or ""), ""))
            pieces.append(("tool", call.index, call.arguments))
        for kind, key, text in pieces:
            if kind != "tool_start" and not text:
                continue
            if runs and kind != "tool_start" and runs[-1][0] == kind and runs[-1][1] == key:
                runs[-1] = (kind, key, runs[-1][2] + text)
            else:
                runs.append((kind, key, text))
    return runs


def _tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's ``input`` is. A call cut
    short by max_tokens holds no whole object yet: ``{}``."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _blocks(outs: list[RequestOutput]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    calls: dict[int, dict[str, Any]] = {}
    for kind, key, text in _runs(outs):
        last = blocks[-1] if blocks else None
        if kind == "tool_start":
            index, call_id, name = key
            calls[index] = {"type": "tool_use", "id": call_id, "name": name, "input": ""}
            blocks.append(calls[index])
        elif kind == "tool" and key in calls:
            calls[key]["input"] += text
        elif kind in ("thinking", "text"):
            if last is not None and last["type"] == kind:
                last[kind] += text
            else:
                blocks.append({"type": "thinking", "thinking": text, "signature": ""} if kind == "thinking" else {"type": "text", "text": text})
    for call in calls.values():
        call["input"] = _tool_input(call["input"])
    if not blocks:  # an empty answer is one empty text block, streamed or not
        blocks.append({"type": "text", "text": ""})
    return blocks


class MessagesReply:
    """The Messages API's view of one generation (a ``dispatch.Reply``)."""

    def __init__(self, admitted: Admitted):
        self.admitted = admitted
        self._index = -1  # the open content block, -1 before the first
        self._open: Any = None  # what it holds: "thinking", "text" or ("tool", call index)

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

    def _switch(self, kind: Any, block: dict[str, Any] | None = None) -> Iterable[bytes]:
        if self._open == kind and block is None:
            return
        yield from self._close_block()
        self._index += 1
        self._open = kind
        if block is None:
            block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
        yield event("content_block_start", {"index": self._index, "content_block": block})

    def _close_block(self) -> Iterable[bytes]:
        if self._open is not None:
            yield event("content_block_stop", {"index": self._index})
            self._open = None

    def delta(self, outs: list[RequestOutput]) -> Iterable[bytes]:
        for kind, key, text in _runs(outs):
            if kind == "tool_start":
                index, call_id, name = key
                yield from self._switch(("tool", index), {"type": "tool_use", "id": call_id, "name": name, "input": {}})
                continue
            if kind == "tool":
                if self._open != ("tool", key):
                    continue  # a fragment of a call that never started: nothing to attach it to
                delta = {"type": "input_json_delta", "partial_json": text}
            else:
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
        final = outs[-1]
        return self._message(_blocks(outs), final, usage_json(final.usage or Usage()))


class CountTokensReply(MessagesReply):
    """``/v1/messages/count_tokens``: the prompt's size, from a
    ``max_tokens=0`` request (rendered exactly as a generation would be)."""

    def body(self, outs: list[RequestOutput]) -> dict[str, Any]:
        u = outs[-1].usage or Usage()
        return {"input_tokens": u.prompt_tokens}
