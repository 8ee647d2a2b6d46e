"""Chat completions on the wire: `chat.completion`, `chat.completion.chunk`.

Plain dicts encoded with msgspec's JSON encoder: this is the gateway's
per-token path, so it stays allocation-light and free of model classes.
``ChatReply`` is the chat API's ``Reply`` (gateway/dispatch.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from protocol.messages import RequestOutput, TokenLogprob, ToolCallDelta, Usage

from . import compat
from .dispatch import Admitted, joined_text
from .errors import APIError

_json = msgspec.json.Encoder()


def usage_json(u: Usage) -> dict[str, Any]:
    """OpenAI names plus kamiwaza-mlx's aliases (compat.py), and decode speed.

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
        **compat.usage_aliases(u),
    }


def message_choice(
    index: int, content: str, reasoning: str, finish_reason: str,
    tool_calls: list[dict[str, Any]] | None = None, logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One entry of a ``chat.completion``'s ``choices``."""
    # With tool calls and no text before them, OpenAI's content is null.
    message: dict[str, Any] = {"role": "assistant", "content": content if content or not tool_calls else None, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": logprobs}


def completion(
    *, request_id: str, model: str, created: int, choices: list[dict[str, Any]], usage: Usage, conversation_id: str | None,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_json(usage),
        "metadata": compat.completion_metadata(conversation_id),
    }


class ChunkWriter:
    """Builds the SSE lines of one streamed completion."""

    def __init__(self, request_id: str, model: str, created: int):
        self._head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + _json.encode({**self._head, "choices": choices, **extra}) + b"\n\n"

    def role(self, index: int = 0) -> bytes:
        return self._event([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}])

    def delta(
        self, content: str, reasoning: str, tool_calls: list[dict[str, Any]] | None = None, logprobs: dict[str, Any] | None = None,
        index: int = 0,
    ) -> bytes:
        delta: dict[str, Any] = {}
        if content:
            delta["content"] = content
        if reasoning:
            delta["reasoning_content"] = reasoning
        if tool_calls:
            delta["tool_calls"] = tool_calls
        return self._event([{"index": index, "delta": delta, "finish_reason": None, "logprobs": logprobs}])

    def finish(self, reason: str, index: int = 0) -> bytes:
        return self._event([{"index": index, "delta": {}, "finish_reason": reason, "logprobs": None}])

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
    return {"content": [token_logprob_json(t) for t in tokens], "refusal": None}


def token_logprob_json(t: TokenLogprob) -> dict[str, Any]:
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
    return openai_reason(out.finish_reason)


def openai_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "tool_calls") else "stop"


def choice_reason(final: RequestOutput, group: list[RequestOutput], n: int) -> str:
    """How one choice ended: the request's end with one choice, else the
    choice's own (``choice_finish_reason`` on its last output)."""
    ended = [o.choice_finish_reason for o in group if o.choice_finish_reason]
    return finish_reason(final) if n == 1 or not ended else openai_reason(ended[-1])


def by_choice(outs: list[RequestOutput]) -> dict[int, list[RequestOutput]]:
    """Outputs grouped by choice index, in the order the choices appear."""
    groups: dict[int, list[RequestOutput]] = {}
    for o in outs:
        groups.setdefault(o.index, []).append(o)
    return groups


class ChatReply:
    """The chat API's view of one generation (a ``dispatch.Reply``). With
    ``n`` > 1 each choice's end arrives as ``choice_finish_reason``."""

    def __init__(self, admitted: Admitted, *, include_usage: bool = False, n: int = 1):
        self.admitted = admitted
        self.include_usage = include_usage
        self.n = n
        self.writer = ChunkWriter(admitted.request_id, admitted.model, admitted.created)

    def open(self) -> Iterable[bytes]:
        for index in range(self.n):
            yield self.writer.role(index)

    def delta(self, outs: list[RequestOutput]) -> Iterable[bytes]:
        for index, group in by_choice(outs).items():
            content, reasoning = joined_text(group)
            calls = stream_tool_calls(group)
            logprobs = logprobs_json(group)
            if content or reasoning or calls or logprobs:
                yield self.writer.delta(content, reasoning, calls, logprobs, index)
            ended = [o.choice_finish_reason for o in group if o.choice_finish_reason]
            if self.n > 1 and ended:
                yield self.writer.finish(openai_reason(ended[-1]), index)

    def close(self, final: RequestOutput) -> Iterable[bytes]:
        if self.n == 1:
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
        final, a = outs[-1], self.admitted
        groups = by_choice(outs)
        choices = []
        for index in range(self.n):
            group = groups.get(index, [])
            content, reasoning = joined_text(group) if group else ("", "")
            reason = choice_reason(final, group, self.n)
            choices.append(message_choice(index, content, reasoning, reason, whole_tool_calls(group), logprobs_json(group)))
        return completion(request_id=a.request_id, model=a.model, created=a.created, choices=choices,
                          usage=final.usage or Usage(), conversation_id=a.conversation_id)
