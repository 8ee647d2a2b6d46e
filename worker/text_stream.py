"""Turning a request's decoded text into what the client sees.

Two small filters, composed per request:

* ``StopFilter`` finds stop strings in the raw text, even when one is split
  across tokens, and never lets any part of a stop string through.
* ``ThinkSplitter`` separates ``<think>…</think>`` reasoning from the answer,
  also across token boundaries, so it can be returned as ``reasoning_content``
  or dropped (``strip_thinking``).

Both hold back only the shortest tail that could still become a tag, so text
reaches the client as early as possible. Pure Python: unit-tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol.messages import ToolCallDelta

    from .tool_parsers import ToolCallParser

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def _partial_suffix(text: str, needles: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a needle."""
    best = 0
    for needle in needles:
        for n in range(min(len(needle) - 1, len(text)), best, -1):
            if text.endswith(needle[:n]):
                best = n
                break
    return best


@dataclass
class StopFilter:
    stops: list[str]
    _held: str = ""
    stopped: bool = False
    matched: str | None = None  # the stop string found (the earliest in the text)

    def feed(self, text: str) -> str:
        """Return the text that is safe to emit; sets ``stopped`` on a match."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        hits = [(buf.find(s), s) for s in self.stops if s and s in buf]
        if hits:
            self.stopped = True
            self._held = ""
            at, self.matched = min(hits, key=lambda h: (h[0], -len(h[1])))
            return buf[:at]
        keep = _partial_suffix(buf, self.stops)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """At the end of generation a held partial match is ordinary text."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out


@dataclass
class ThinkSplitter:
    """Routes text to ``content`` or ``reasoning``.

    ``in_reasoning`` starts True when the chat template already opened a
    ``<think>`` block in the prompt (the output then only shows ``</think>``).
    """

    in_reasoning: bool = False
    _held: str = ""
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)

    def feed(self, text: str) -> tuple[str, str]:
        buf = self._held + text
        self._held = ""
        content: list[str] = []
        reasoning: list[str] = []
        while buf:
            tag = THINK_CLOSE if self.in_reasoning else THINK_OPEN
            sink = reasoning if self.in_reasoning else content
            i = buf.find(tag)
            if i >= 0:
                sink.append(buf[:i])
                buf = buf[i + len(tag) :]
                self.in_reasoning = not self.in_reasoning
                continue
            keep = _partial_suffix(buf, [tag])
            sink.append(buf[: len(buf) - keep])
            self._held = buf[len(buf) - keep :]
            break
        return "".join(content), "".join(reasoning)

    def flush(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        return ("", held) if self.in_reasoning else (held, "")


@dataclass
class TextStream:
    """Raw decoded text in; (content, reasoning) deltas out. With ``tools``
    (a tool_parsers.ToolCallParser) the answer text also yields tool-call
    pieces, collected until ``take_calls``."""

    stop: StopFilter
    think: ThinkSplitter | None  # None: raw text, all of it content (legacy completions)
    strip_thinking: bool = False
    tools: ToolCallParser | None = None
    _calls: list[ToolCallDelta] = field(default_factory=list)

    @classmethod
    def create(
        cls, stops: list[str], *, strip_thinking: bool, starts_in_reasoning: bool, split_thinking: bool = True,
        tools: ToolCallParser | None = None,
    ) -> TextStream:
        think = ThinkSplitter(starts_in_reasoning) if split_thinking else None
        return cls(StopFilter(list(stops)), think, strip_thinking, tools)

    @property
    def stopped(self) -> bool:
        """A stop string matched, or no more tool calls are wanted (parallel_tool_calls=false)."""
        return self.stop.stopped or (self.tools is not None and self.tools.done)

    @property
    def saw_calls(self) -> bool:
        return self.tools is not None and self.tools.saw_calls

    @property
    def has_calls(self) -> bool:
        """Tool-call pieces are waiting for ``take_calls``."""
        return bool(self._calls)

    def take_calls(self) -> list[ToolCallDelta]:
        calls, self._calls = self._calls, []
        return calls

    def feed(self, text: str) -> tuple[str, str]:
        if self.think is None:
            return self.stop.feed(text), ""
        return self._route(self.think.feed(self.stop.feed(text)))

    def finish(self) -> tuple[str, str]:
        if self.think is None:
            return self.stop.flush(), ""
        c1, r1 = self.think.feed(self.stop.flush())
        c2, r2 = self.think.flush()
        content, reasoning = self._route((c1 + c2, r1 + r2))
        if self.tools is not None:
            tail, calls = self.tools.finish()
            self._calls += calls
            content += tail
        return content, reasoning

    def _route(self, parts: tuple[str, str]) -> tuple[str, str]:
        content, reasoning = parts
        if self.tools is not None and content:
            content, calls = self.tools.feed(content)
            self._calls += calls
        return (content, "") if self.strip_thinking else (content, reasoning)
