"""One chat turn: build the request, stream (or not), feed a sink, and record
the turn in the conversation only if it finished.

Shared by the REPL and the one-shot mode; they differ only in their sink.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from client.api import ConvHeaders, Gateway
from client.conversation import Content, Conversation
from client.errors import ApiError


@dataclass
class ChatSettings:
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = True
    # Any other request fields (-o top_k=20, -o ignore_eos=true, ...).
    extra: dict[str, Any] = field(default_factory=dict)


class Sink(Protocol):
    """Where text goes as it arrives (a terminal, stdout...)."""

    def reasoning(self, text: str) -> None: ...

    def content(self, text: str) -> None: ...


@dataclass
class TurnResult:
    text: str = ""
    reasoning: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    conv: ConvHeaders = field(default_factory=ConvHeaders)
    finish_reason: str | None = None
    interrupted: bool = False
    streamed: bool = True
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    ended: float | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def elapsed(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


def request_body(conv: Conversation, user: Content, settings: ChatSettings) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": conv.request_messages(user),
        "conversation": conv.id,
        "stream": settings.stream,
    }
    if settings.model:
        body["model"] = settings.model
    # `max_tokens` is the field servers read (kamiwaza-mlx's client sent another name).
    for key in ("max_tokens", "temperature", "top_p"):
        value = getattr(settings, key)
        if value is not None:
            body[key] = value
    if settings.stream:
        body["stream_options"] = {"include_usage": True}
    reserved = ("messages", "stream")  # the client owns these two
    body.update({k: v for k, v in settings.extra.items() if k not in reserved})
    return body


def run_turn(
    gateway: Gateway, conv: Conversation, user: Content, settings: ChatSettings, sink: Sink
) -> TurnResult:
    """Run one turn. Ctrl-C (KeyboardInterrupt) while waiting or streaming
    returns a result with ``interrupted=True``; leaving the stream's block
    closes the connection, which aborts the generation server-side."""
    result = TurnResult(streamed=settings.stream)
    body = request_body(conv, user, settings)
    try:
        if settings.stream:
            _stream(gateway, body, sink, result)
        else:
            _complete(gateway, body, sink, result)
    except KeyboardInterrupt:
        result.interrupted = True
    result.ended = time.perf_counter()
    if not result.interrupted:
        conv.commit(user, result.text)
    return result


def _stream(gateway: Gateway, body: dict[str, Any], sink: Sink, result: TurnResult) -> None:
    finished = False
    text: list[str] = []  # lists, not `str +=`: long answers stay linear
    thought: list[str] = []
    try:
        with gateway.stream_chat(body) as stream:
            result.conv = stream.conv
            for ev in stream.events():
                if ev.error is not None:
                    raise ApiError.from_payload(None, {"error": ev.error})
                if ev.done:
                    finished = True
                    break
                if (ev.reasoning or ev.content) and result.first_token_at is None:
                    result.first_token_at = time.perf_counter()
                if ev.reasoning:
                    thought.append(ev.reasoning)
                    sink.reasoning(ev.reasoning)
                if ev.content:
                    text.append(ev.content)
                    sink.content(ev.content)
                if ev.finish_reason:
                    result.finish_reason = ev.finish_reason
                if ev.usage:
                    result.usage = ev.usage
    finally:  # an interrupted turn still reports what it showed
        result.text = "".join(text)
        result.reasoning = "".join(thought)
    if result.finish_reason == "error":
        raise ApiError(None, "the server stopped this answer with an error")
    if not finished and result.finish_reason is None:
        raise ApiError(None, "the stream ended before the answer finished")


def _complete(gateway: Gateway, body: dict[str, Any], sink: Sink, result: TurnResult) -> None:
    payload, result.conv = gateway.chat(body)
    result.first_token_at = time.perf_counter()
    choices = payload.get("choices") or [{}]
    message = choices[0].get("message") or {}
    result.finish_reason = choices[0].get("finish_reason")
    result.reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    result.text = message.get("content") or ""
    result.usage = payload.get("usage") or {}
    if result.conv.conv_id is None:  # the JSON body names it too
        result.conv.conv_id = (payload.get("metadata") or {}).get("conversation_id")
    if result.reasoning:
        sink.reasoning(result.reasoning)
    if result.text:
        sink.content(result.text)
