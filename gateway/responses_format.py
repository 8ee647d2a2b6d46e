"""OpenAI Responses on the wire: the ``response`` object and its event stream.

``ResponsesReply`` is the Responses API's ``Reply`` (gateway/dispatch.py).
The stream is the one the openai SDK's ``responses.stream()`` accumulates:
``response.created``, ``response.in_progress``; per output item
``response.output_item.added``, ``response.content_part.added``, its deltas
(``response.reasoning_text.delta`` / ``response.output_text.delta``), the
matching ``.done`` events, ``response.content_part.done``,
``response.output_item.done``; then ``response.completed`` (or
``response.incomplete`` past ``max_output_tokens``). Every event carries a
``sequence_number``. A failure after the start is an ``error`` event and
``response.failed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from protocol.messages import RequestOutput, Usage

from .chat_format import token_logprob_json
from .dispatch import Admitted
from .errors import APIError
from .responses_schema import NamedFunction, ResponseRequest, item_id

_json = msgspec.json.Encoder()


def usage_json(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.prompt_tokens,
        # kmlx counts neither cache writes nor reasoning tokens apart (docs/apis.md)
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


@dataclass
class _Item:
    """One output item being built: reasoning, a message, or a function call."""

    kind: str  # "reasoning" | "message" | "function_call"
    id: str
    text: list[str] = field(default_factory=list)  # the text, or a call's arguments
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # a message's tokens, when asked for
    call_id: str = ""
    name: str = ""

    def part(self) -> dict[str, Any]:
        text = "".join(self.text)
        if self.kind == "reasoning":
            return {"type": "reasoning_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": self.logprobs}

    def json(self, status: str) -> dict[str, Any]:
        if self.kind == "function_call":
            return {"type": "function_call", "id": self.id, "call_id": self.call_id, "name": self.name,
                    "arguments": "".join(self.text), "status": status}
        if self.kind == "reasoning":
            return {"type": "reasoning", "id": self.id, "summary": [], "content": [self.part()], "status": status}
        return {"type": "message", "id": self.id, "status": status, "role": "assistant", "content": [self.part()]}

    def empty(self) -> dict[str, Any]:
        item = self.json("in_progress")
        if self.kind == "function_call":
            item["arguments"] = ""
        else:
            item["content"] = []
        return item


def _runs(outs: list[RequestOutput]) -> list[tuple[str, Any, str, list[Any]]]:
    """A batch of outputs as (kind, key, text, logprobs) runs in order:
    reasoning, message text, and tool-call pieces (a call's first piece:
    kind "call", key (index, id, name)). Consecutive pieces of one run
    merge, so a gateway that fell behind sends fewer, larger events."""
    runs: list[tuple[str, Any, str, list[Any]]] = []
    for out in outs:
        pieces: list[tuple[str, Any, str, list[Any]]] = [
            ("reasoning", None, out.reasoning, []), ("message", None, out.content, list(out.logprobs or ())),
        ]
        for call in out.tool_calls or ():
            if call.id is not None:
                pieces.append(("call", (call.index, call.id, call.name or ""), "", []))
            pieces.append(("arguments", call.index, call.arguments, []))
        for kind, key, text, logprobs in pieces:
            if kind != "call" and not text and not logprobs:
                continue
            last = runs[-1] if runs else None
            if last is not None and kind != "call" and last[0] == kind and last[1] == key:
                runs[-1] = (kind, key, last[2] + text, last[3] + logprobs)
            else:
                runs.append((kind, key, text, logprobs))
    return runs


# What a finished turn leaves behind, for the response store (routes/responses.py).
OnFinish = Callable[[dict[str, Any], list[dict[str, Any]]], None]


class ResponsesReply:
    """The Responses API's view of one generation (a ``dispatch.Reply``).
    ``on_finish(response, output_messages)`` runs once the response is
    complete (or incomplete), streamed or not: the route stores it there."""

    def __init__(self, admitted: Admitted, body: ResponseRequest, response_id: str, on_finish: OnFinish):
        self.admitted = admitted
        self.request = body
        self.id = response_id
        self.created_at = time.time()
        self.on_finish = on_finish
        self._seq = 0
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}  # function calls by the worker's call index
        self._logprobs: list[dict[str, Any]] = []  # token logprobs not yet given to a message

    # -- the response object --------------------------------------------- #
    def _response(self, status: str, output: list[dict[str, Any]], usage: Usage | None, **extra: Any) -> dict[str, Any]:
        b = self.request
        fmt = b.text.format.model_dump(by_alias=True, exclude_none=True) if b.text and b.text.format else {"type": "text"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": int(self.created_at),
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": None,
            "instructions": b.instructions,
            "max_output_tokens": b.max_output_tokens,
            "model": self.admitted.model,
            "output": output,
            "parallel_tool_calls": b.parallel_tool_calls is not False,
            "previous_response_id": b.previous_response_id,
            "reasoning": {"effort": b.reasoning.effort if b.reasoning else None, "summary": None},
            "store": b.store is not False,
            "temperature": b.temperature,
            "text": {"format": fmt},
            "tool_choice": b.tool_choice.model_dump() if isinstance(b.tool_choice, NamedFunction) else (b.tool_choice or "auto"),
            "tools": [t.model_dump(exclude_none=True) for t in b.tools or []],
            "top_logprobs": b.top_logprobs or 0,
            "top_p": b.top_p,
            "truncation": "disabled",
            "usage": usage_json(usage) if usage is not None else None,
            "metadata": b.metadata or {},
            **({"user": b.user} if b.user is not None else {}),
            **extra,
        }

    def _finished(self, final: RequestOutput) -> dict[str, Any]:
        status = "incomplete" if final.finish_reason == "length" else "completed"
        extra = {"incomplete_details": {"reason": "max_output_tokens"}} if status == "incomplete" else {}
        response = self._response(status, [i.json(status) for i in self._items], final.usage or Usage(), **extra)
        self.on_finish(response, self._messages())
        self._response_json = response
        return response

    def _messages(self) -> list[dict[str, Any]]:
        """The turn's output in chat form, for a follow-up's context."""
        text = "".join("".join(i.text) for i in self._items if i.kind == "message")
        calls = [{"id": i.call_id, "type": "function", "function": {"name": i.name, "arguments": "".join(i.text)}}
                 for i in self._items if i.kind == "function_call"]
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = calls
        return [message]

    # -- streaming -------------------------------------------------------- #
    def _event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + _json.encode(payload) + b"\n\n"

    def open(self) -> Iterable[bytes]:
        response = self._response("in_progress", [], None)
        yield self._event("response.created", response=response)
        yield self._event("response.in_progress", response=response)

    def _where(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": self._items.index(item), "content_index": 0}

    def _start(self, item: _Item) -> Iterable[bytes]:
        yield from self._finish_item()
        self._items.append(item)
        self._open = item
        yield self._event("response.output_item.added", output_index=len(self._items) - 1, item=item.empty())
        if item.kind != "function_call":
            yield self._event("response.content_part.added", **self._where(item), part={**item.part(), "text": ""})

    def _new(self, kind: str) -> _Item:
        prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc"}[kind]
        return _Item(kind, item_id(prefix, self.id, len(self._items)))

    def _finish_item(self) -> Iterable[bytes]:
        item = self._open
        if item is None:
            return
        self._open = None
        where = self._where(item)
        text = "".join(item.text)
        if item.kind == "function_call":
            yield self._event("response.function_call_arguments.done", item_id=item.id, output_index=where["output_index"],
                              name=item.name, arguments=text)
            yield self._event("response.output_item.done", output_index=where["output_index"], item=item.json("completed"))
            return
        if item.kind == "reasoning":
            yield self._event("response.reasoning_text.done", **where, text=text)
        else:
            yield self._event("response.output_text.done", **where, text=text, logprobs=item.logprobs)
        yield self._event("response.content_part.done", **where, part=item.part())
        yield self._event("response.output_item.done", output_index=where["output_index"], item=item.json("completed"))

    def delta(self, outs: list[RequestOutput]) -> Iterable[bytes]:
        for kind, key, text, token_logprobs in _runs(outs):
            if token_logprobs:
                self._logprobs += [token_logprob_json(t) for t in token_logprobs]
            if kind == "call":
                index, call_id, name = key
                started = self._new("function_call")
                started.call_id, started.name = call_id, name
                self._calls[index] = started
                yield from self._start(started)
                continue
            if not text:
                continue
            if kind == "arguments":
                call = self._calls.get(key)
                if call is None or call is not self._open:
                    continue  # a fragment of a call that never started: nothing to attach it to
                call.text.append(text)
                yield self._event("response.function_call_arguments.delta", item_id=call.id,
                                  output_index=self._items.index(call), delta=text)
                continue
            if self._open is None or self._open.kind != kind:
                yield from self._start(self._new(kind))
            item = self._open
            assert item is not None
            item.text.append(text)
            if kind == "reasoning":
                yield self._event("response.reasoning_text.delta", **self._where(item), delta=text)
            else:
                # A message's token logprobs go with the text they made (held-back ones with the next text).
                logprobs, self._logprobs = self._logprobs, []
                item.logprobs += logprobs
                yield self._event("response.output_text.delta", **self._where(item), delta=text, logprobs=logprobs)

    def close(self, final: RequestOutput) -> Iterable[bytes]:
        if not any(i.kind in ("message", "function_call") for i in self._items):
            yield from self._start(self._new("message"))  # an empty answer is still one (empty) message
        message = next((i for i in reversed(self._items) if i.kind == "message"), None)
        if message is not None and self._logprobs:
            message.logprobs += self._logprobs  # tokens whose text never showed (a stop string)
            self._logprobs = []
        yield from self._finish_item()
        response = self._finished(final)
        yield self._event("response.completed" if response["status"] == "completed" else "response.incomplete", response=response)

    def fail(self, err: APIError) -> Iterable[bytes]:
        yield self._event("error", code=err.code, message=err.message, param=err.param)
        failed = self._response("failed", [i.json("incomplete") for i in self._items], None,
                                error={"code": "server_error" if err.status >= 500 else "invalid_prompt", "message": err.message})
        yield self._event("response.failed", response=failed)

    def keep_alive(self) -> bytes:
        return b": keep-alive\n\n"

    # -- one body --------------------------------------------------------- #
    def body(self, outs: list[RequestOutput]) -> dict[str, Any]:
        """Built by the streaming path with its events dropped: one way to
        turn outputs into items, so the two answers always agree."""
        for _ in self.delta(outs):
            pass
        for _ in self.close(outs[-1]):
            pass
        return self._response_json
