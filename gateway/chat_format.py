"""Chat completions on the wire: `chat.completion`, `chat.completion.chunk`.

Plain dicts encoded with msgspec's JSON encoder: this is the gateway's
per-token path, so it stays allocation-light and free of model classes.
``ChatReply`` is the chat API's ``Reply`` (gateway/dispatch.py).
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec

from protocol.messages import RequestOutput, TokenLogprob, ToolCallDelta, Usage

from .dispatch import Admitted, joined_text
from .errors import APIError

_json = msgspec.json.Encoder()


def usage_json(u: Usage) -> dict[str, Any]:
    """OpenAI names plus the seed's aliases, and decode speed.

    ``tokens_per_second`` is completion tokens per second of decoding
    (first token to last), not prompt+completion over wall time.
    """
    tps = (u.completion_tokens - 1) / u.decode_seconds if u.decode_seconds > 0 and u.completion_tokens > 1 else 0.0
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "tokens_per_second": round(tps, 2),
        "time_to_first_token": round(u.ttft_seconds, 4),
        # the seed's names, kept so its clients need no change
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def completion(
    *,
    request_id: str,
    model: str,
    created: int,
    content: str,
    reasoning: str,
    finish_reason: str,
    usage: Usage,
    conversation_id: str | None,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # With tool calls and no text before them, OpenAI's content is null.
    message: dict[str, Any] = {"role": "assistant", "content": content if content or not tool_calls else None, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": logprobs}],
        "usage": usage_json(usage),
        "metadata": {"conversation_id": conversation_id},
    }


class ChunkWriter:
    """Builds the SSE lines of one streamed completion."""

    def __init__(self, request_id: str, model: str, created: int):
        self._head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + _json.encode({**self._head, "choices": choices, **extra}) + b"\n\n"

    def role(self) -> bytes:
        return self._event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}])

    def delta(
        self, content: str, reasoning: str, tool_calls: list[dict[str, Any]] | None = None, logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        delta: dict[str, Any] = {}
        if content:
            delta["content"] = content
        if reasoning:
            delta["reasoning_content"] = reasoning
        if tool_calls:
            delta["tool_calls"] = tool_calls
        return self._event([{"index": 0, "delta": delta, "finish_reason": None, "logprobs": logprobs}])

    def finish(self, reason: str) -> bytes:
        return self._event([{"index": 0, "delta": {}, "finish_reason": reason, "logprobs": None}])

    def usage(self, usage: Usage) -> bytes:
        return self._event([], usage=usage_json(usage))

    @staticmethod
    def error(body: dict[str, Any]) -> bytes:
        return b"data: " + _json.encode(body) + b"\n\n"

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"

    @staticmethod
    def keep_alive() -> bytes:
        return b": keep-alive\n\n"


def stream_tool_calls(outs: list[RequestOutput]) -> list[dict[str, Any]]:
    """Tool-call pieces in OpenAI's delta shape: a call's first piece carries
    ``id``, ``type`` and ``function.name``; the rest ``function.arguments``.
    Pieces of one call that arrived together are joined."""
    merged: list[dict[str, Any]] = []
    for piece in _pieces(outs):
        last = merged[-1] if merged else None
        if last is not None and last["index"] == piece.index and piece.id is None:
            last["function"]["arguments"] += piece.arguments
            continue
        item: dict[str, Any] = {"index": piece.index, "function": {"arguments": piece.arguments}}
        if piece.id is not None:
            item["id"] = piece.id
            item["type"] = "function"
            item["function"]["name"] = piece.name or ""
        merged.append(item)
    return merged


def whole_tool_calls(outs: list[RequestOutput]) -> list[dict[str, Any]]:
    """The complete calls of a reply, as ``message.tool_calls``."""
    calls: dict[int, dict[str, Any]] = {}
    for piece in _pieces(outs):
        call = calls.setdefault(piece.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if piece.id is not None:
            call["id"] = piece.id
            call["function"]["name"] = piece.name or ""
        call["function"]["arguments"] += piece.arguments
    return [calls[i] for i in sorted(calls)]


def logprobs_json(outs: list[RequestOutput]) -> dict[str, Any] | None:
    """OpenAI's ``choices[].logprobs`` for the tokens of these outputs (None when not asked for)."""
    tokens = [lp for o in outs if o.logprobs for lp in o.logprobs]
    if not tokens:
        return None
    return {"content": [_token_json(t) for t in tokens], "refusal": None}


def _token_json(t: TokenLogprob) -> dict[str, Any]:
    out = _alternative(t.token_bytes, t.logprob)
    out["top_logprobs"] = [_alternative(a.token_bytes, a.logprob) for a in t.top]
    return out


def _alternative(raw: bytes, logprob: float) -> dict[str, Any]:
    # ``token`` is text; a token holding part of a UTF-8 character shows U+FFFD there, ``bytes`` is exact.
    return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


def _pieces(outs: list[RequestOutput]) -> Iterable[ToolCallDelta]:
    for out in outs:
        if out.tool_calls:
            yield from out.tool_calls


def finish_reason(out: RequestOutput) -> str:
    return out.finish_reason if out.finish_reason in ("stop", "length", "tool_calls") else "stop"


class ChatReply:
    """The chat API's view of one generation (a ``dispatch.Reply``)."""

    def __init__(self, admitted: Admitted, *, include_usage: bool = False):
        self.admitted = admitted
        self.include_usage = include_usage
        self.writer = ChunkWriter(admitted.request_id, admitted.model, admitted.created)

    def open(self) -> Iterable[bytes]:
        yield self.writer.role()

    def delta(self, outs: list[RequestOutput]) -> Iterable[bytes]:
        content, reasoning = joined_text(outs)
        calls = stream_tool_calls(outs)
        logprobs = logprobs_json(outs)
        if content or reasoning or calls or logprobs:
            yield self.writer.delta(content, reasoning, calls, logprobs)

    def close(self, final: RequestOutput) -> Iterable[bytes]:
        yield self.writer.finish(finish_reason(final))
        if self.include_usage:
            yield self.writer.usage(final.usage or Usage())
        yield self.writer.done()

    def fail(self, err: APIError) -> Iterable[bytes]:
        yield self.writer.error(err.body())
        yield self.writer.done()

    def keep_alive(self) -> bytes:
        return self.writer.keep_alive()

    def body(self, outs: list[RequestOutput]) -> dict[str, Any]:
        content, reasoning = joined_text(outs)
        final, a = outs[-1], self.admitted
        return completion(
            request_id=a.request_id, model=a.model, created=a.created, content=content, reasoning=reasoning,
            finish_reason=finish_reason(final), usage=final.usage or Usage(), conversation_id=a.conversation_id,
            tool_calls=whole_tool_calls(outs), logprobs=logprobs_json(outs),
        )
