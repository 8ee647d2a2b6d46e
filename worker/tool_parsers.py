"""Streaming tool-call parsers: model text in, content and call pieces out.

A parser sits after the stop filter and the ``<think>`` splitter
(text_stream.py) and sees only answer text. Like them it holds back only
what could still become call markup, so ordinary text reaches the client
as early as possible. Per family:

* ``TaggedJSONParser`` — ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  (Hermes, Qwen2.5/Qwen3, and kmlx's fallback format for templates without tools)
* ``Llama3JSONParser`` — a reply that *is* ``{"name": ..., "parameters": {...}}``
  (optionally after ``<|python_tag|>``; several joined by ``;``)
* ``MistralParser`` — ``[TOOL_CALLS][{"name": ..., "arguments": {...}}]`` or
  ``[TOOL_CALLS]name[ARGS]{...}``
* ``WholeCallParser`` — any other mlx-lm family: the text between its
  markers goes to mlx-lm's own ``parse_tool_call`` once the call is complete.

The JSON families stream ``arguments`` fragment by fragment as the model
writes them; a call whose head is not the expected JSON shape is parsed
whole at its end, and text that is no call after all is returned as
content. Pure Python: unit-tested on recorded model outputs.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol.messages import ToolCallDelta

from .text_stream import _partial_suffix

# `{"name": "<name>", "arguments": ` (or "parameters", Llama 3's key)
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*', re.S)
_HEAD_START = '{"name":'  # what a head must begin with (spaces aside)


def new_call_id(style: str = "openai") -> str:
    if style == "mistral":  # Mistral's templates insist on 9 alphanumerics
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return f"call_{secrets.token_hex(12)}"


@dataclass
class _ValueEnd:
    """Finds where one JSON object, array or string ends in text fed piecewise."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    started: bool = False
    done: bool = False

    def feed(self, text: str) -> int:
        """Characters of ``text`` that belong to the value (all, unless it ended)."""
        for i, ch in enumerate(text):
            if not self.started:
                if ch.isspace():
                    continue
                self.started = True
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                    if self.depth == 0:
                        self.done = True
                        return i + 1
                continue
            if ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return i + 1
        return len(text)


def _could_be_head(text: str) -> bool:
    """Whether ``text`` may still grow into ``{"name": "...", "arguments": ``."""
    squeezed = re.sub(r"\s+", "", text)
    n = min(len(squeezed), len(_HEAD_START))
    return squeezed[:n] == _HEAD_START[:n]


@dataclass
class _Call:
    """One call object being read: head, then streamed arguments, then the closing brace."""

    index: int
    id_style: str
    head: str = ""
    name: str | None = None
    args: _ValueEnd = field(default_factory=_ValueEnd)
    raw: str = ""  # everything fed, for parsing a call whole when its head is unusual
    whole: bool = False  # the head was not the streaming shape: parse at the end
    closed: bool = False  # the object's final brace was seen

    def feed(self, text: str) -> tuple[list[ToolCallDelta], str]:
        """Pieces for the client, and the text after this call object (once closed)."""
        out: list[ToolCallDelta] = []
        if self.closed:
            return out, text
        self.raw += text
        if self.whole:
            end = _object_end(self.raw)
            if end is None:
                return out, ""
            self.closed = True
            rest = self.raw[end:]
            self.raw = self.raw[:end]
            return out, rest
        if self.name is None:
            self.head += text
            m = _HEAD.match(self.head)
            if m is None:
                if not _could_be_head(self.head):
                    self.whole = True
                    self.raw = self.head
                    self.head = ""
                    return self.feed("")
                return out, ""
            self.name = json.loads(f'"{m.group(1)}"')
            out.append(ToolCallDelta(self.index, id=new_call_id(self.id_style), name=self.name))
            text = self.head[m.end():]
            self.head = ""
        if not self.args.done:
            n = self.args.feed(text)
            if text[:n].strip() or (text[:n] and self.args.started):
                out.append(ToolCallDelta(self.index, arguments=text[:n]))
            text = text[n:]
            if not self.args.done:
                return out, ""
        # after the arguments: spaces, then the call object's closing brace
        stripped = text.lstrip()
        if not stripped:
            return out, ""
        if stripped[0] == "}":
            self.closed = True
            return out, stripped[1:]
        self.closed = True  # something unexpected: end the call here
        return out, stripped

    def finish(self) -> list[ToolCallDelta]:
        """The call as one piece when it was read whole (or cut short in its head)."""
        if self.name is not None:
            return []
        parsed = _loads_call(self.raw or self.head)
        if parsed is None:
            return []
        name, arguments = parsed
        return [ToolCallDelta(self.index, id=new_call_id(self.id_style), name=name, arguments=arguments)]

    @property
    def started(self) -> bool:
        return self.name is not None


def _object_end(text: str) -> int | None:
    scan = _ValueEnd()
    n = scan.feed(text)
    return n if scan.done else None


def _loads_call(text: str) -> tuple[str, str] | None:
    """A complete call object -> (name, arguments as JSON text), or None."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return obj["name"], json.dumps(args, ensure_ascii=False)


class ToolCallParser:
    """Base: ``feed`` text, get (content, pieces); ``finish`` at the end."""

    id_style = "openai"

    def __init__(self) -> None:
        self.calls = 0  # calls started so far
        self.limit: int | None = None  # parallel_tool_calls=false: 1

    @property
    def saw_calls(self) -> bool:
        return self.calls > 0

    @property
    def done(self) -> bool:
        """No more calls are wanted (the limit was reached and the last one closed)."""
        return False

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        raise NotImplementedError

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        raise NotImplementedError


class TaggedJSONParser(ToolCallParser):
    """Calls wrapped in start/end tags, each holding one JSON call object."""

    def __init__(self, start: str = "<tool_call>", end: str = "</tool_call>"):
        super().__init__()
        self.start, self.end = start, end
        self._held = ""
        self._call: _Call | None = None
        self._after_call = False  # strip the whitespace models put between calls
        self._closing = ""  # text after a closed call object, before the end tag

    @property
    def done(self) -> bool:
        return self.limit is not None and self.calls >= self.limit and self._call is None

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        buf = self._held + text
        self._held = ""
        content: list[str] = []
        pieces: list[ToolCallDelta] = []
        while buf:
            if self._call is not None:
                buf = self._in_call(buf, content, pieces)
                continue
            i = buf.find(self.start)
            if i < 0:
                keep = _partial_suffix(buf, [self.start])
                self._text(buf[: len(buf) - keep], content)
                self._held = buf[len(buf) - keep :]
                break
            self._text(buf[:i], content)
            buf = buf[i + len(self.start) :]
            if self.limit is not None and self.calls >= self.limit:
                self._call = _Call(-1, self.id_style)  # read and drop calls past the limit
            else:
                self._call = _Call(self.calls, self.id_style)
                self.calls += 1
        return "".join(content), pieces

    def _text(self, text: str, content: list[str]) -> None:
        if self._after_call:
            text = text.lstrip()
            self._after_call = not text
        content.append(text)

    def _in_call(self, buf: str, content: list[str], pieces: list[ToolCallDelta]) -> str:
        call = self._call
        assert call is not None
        if not call.closed:
            got, buf = call.feed(buf)
            if call.index >= 0:
                pieces += got
            if not call.closed:
                return ""
        # closed: skip to the end tag
        self._closing += buf
        i = self._closing.find(self.end)
        if i < 0:
            keep = _partial_suffix(self._closing, [self.end])
            self._closing = self._closing[len(self._closing) - keep :]
            return ""
        rest = self._closing[i + len(self.end) :]
        self._end_call(pieces)
        return rest

    def _end_call(self, pieces: list[ToolCallDelta]) -> None:
        call = self._call
        assert call is not None
        if call.index >= 0:
            pieces += call.finish()
        self._call = None
        self._closing = ""
        self._after_call = True

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        pieces: list[ToolCallDelta] = []
        content = ""
        if self._call is not None:
            call = self._call
            if call.started or call.closed or call.index < 0:
                self._end_call(pieces)
            else:  # never became a call: text after all, unless cut short mid-head
                recovered = call.finish()
                if recovered:
                    pieces += recovered
                else:
                    self.calls -= 1
                    text = call.raw or call.head
                    content = "" if not call.whole and _could_be_head(text) else self.start + text
                self._call = None
        held, self._held = self._held, ""
        return content + (held if not self._after_call else held.lstrip()), pieces


class Llama3JSONParser(ToolCallParser):
    """Llama 3.1-3.3: the whole reply is the call (or calls joined by ';'),
    optionally after ``<|python_tag|>``. Anything else is ordinary content."""

    TAG = "<|python_tag|>"

    def __init__(self) -> None:
        super().__init__()
        self._mode = "undecided"  # undecided | text | calls
        self._held = ""
        self._call: _Call | None = None

    @property
    def done(self) -> bool:
        return self.limit is not None and self.calls >= self.limit and self._call is None

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        if self._mode == "text":
            return text, []
        buf = self._held + text
        self._held = ""
        if self._mode == "undecided":
            probe = buf.lstrip()
            if probe.startswith(self.TAG):
                probe = probe[len(self.TAG) :].lstrip()
            if not probe or self.TAG.startswith(probe) or (_could_be_head(probe) and len(re.sub(r"\s+", "", probe)) < len(_HEAD_START)):
                self._held = buf
                return "", []
            if not _could_be_head(probe):
                self._mode = "text"
                return buf, []
            self._mode = "calls"
            buf = probe
        return "", self._calls(buf)

    def _calls(self, buf: str) -> list[ToolCallDelta]:
        pieces: list[ToolCallDelta] = []
        while buf:
            if self._call is None:
                buf = buf.lstrip().lstrip(";").lstrip()
                if not buf:
                    break
                index = self.calls if self.limit is None or self.calls < self.limit else -1
                self._call = _Call(index, self.id_style)
                self.calls += index >= 0
            got, buf = self._call.feed(buf)
            if self._call.index >= 0:
                pieces += got
            if not self._call.closed:
                break
            if self._call.index >= 0:
                pieces += self._call.finish()
            self._call = None
        return pieces

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        if self._mode == "undecided":
            held, self._held = self._held, ""
            return held, []
        pieces: list[ToolCallDelta] = []
        if self._call is not None and self._call.index >= 0:
            pieces = self._call.finish()
        self._call = None
        return "", pieces


class MistralParser(ToolCallParser):
    """``[TOOL_CALLS]`` then a JSON array of calls, or ``name[ARGS]{...}`` (repeatable)."""

    id_style = "mistral"
    MARK = "[TOOL_CALLS]"

    def __init__(self) -> None:
        super().__init__()
        self._held = ""
        self._in_calls = False
        self._buf = ""

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        if self._in_calls:
            self._buf += text
            return "", []
        buf = self._held + text
        i = buf.find(self.MARK)
        if i < 0:
            keep = _partial_suffix(buf, [self.MARK])
            self._held = buf[len(buf) - keep :]
            return buf[: len(buf) - keep], []
        self._held = ""
        self._in_calls = True
        self._buf = buf[i + len(self.MARK) :]
        return buf[:i], []

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        if not self._in_calls:
            held, self._held = self._held, ""
            return held, []
        from mlx_lm.tool_parsers.mistral import parse_tool_call

        try:
            parsed = parse_tool_call(self._buf.strip())
        except (ValueError, AttributeError):
            return self.MARK + self._buf, []
        return "", _whole_calls(self, parsed)


class WholeCallParser(TaggedJSONParser):
    """Another mlx-lm family: its markers frame the call, its own parser reads it whole."""

    def __init__(self, start: str, end: str, parse: Callable[[str, Any], Any], tools: list[dict[str, Any]] | None):
        super().__init__(start, end)
        self._parse = parse
        self._tools = tools
        self._text_in_call = ""

    def _in_call(self, buf: str, content: list[str], pieces: list[ToolCallDelta]) -> str:
        self._text_in_call += buf
        i = self._text_in_call.find(self.end) if self.end else -1
        if i < 0:
            return ""
        rest = self._text_in_call[i + len(self.end) :]
        self._whole(self._text_in_call[:i], content, pieces)
        return rest

    def _whole(self, text: str, content: list[str], pieces: list[ToolCallDelta]) -> None:
        call, self._call = self._call, None
        self._text_in_call = ""
        self._after_call = True
        if call is not None and call.index < 0:
            return  # past the parallel_tool_calls limit: dropped
        self.calls -= 1  # _whole_calls numbers the calls it finds
        try:
            parsed = self._parse(text, self._tools)
        except Exception:  # mlx-lm's parsers raise what they like on malformed calls
            content.append(self.start + text + self.end)
            self._after_call = False
            return
        pieces += _whole_calls(self, parsed)

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        content: list[str] = []
        pieces: list[ToolCallDelta] = []
        if self._call is not None:
            self._whole(self._text_in_call, content, pieces)
        held, self._held = self._held, ""
        return "".join(content) + held, pieces


def _whole_calls(parser: ToolCallParser, parsed: Any) -> list[ToolCallDelta]:
    """mlx-lm's parse result (one call dict or a list) -> one piece per call."""
    calls = parsed if isinstance(parsed, list) else [parsed]
    out: list[ToolCallDelta] = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            continue
        if parser.limit is not None and parser.calls >= parser.limit:
            break
        args = call.get("arguments", {})
        text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        call_id = call.get("id") if isinstance(call.get("id"), str) else new_call_id(parser.id_style)
        out.append(ToolCallDelta(parser.calls, id=call_id, name=call["name"], arguments=text))
        parser.calls += 1
    return out
