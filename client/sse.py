"""Server-sent events -> chat stream events.

The gateway streams OpenAI ``chat.completion.chunk`` objects as ``data:``
lines and ends with ``data: [DONE]``. This module is pure (no I/O) so the
parsing is unit-tested without a server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

DONE = "[DONE]"


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """Yield the data of each event. Follows the SSE rules that matter here:
    several ``data:`` lines join with newlines, a blank line ends an event,
    ``:`` lines are comments (keep-alives), other fields are ignored."""
    buf: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if buf:
                yield "\n".join(buf)
                buf = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            buf.append(value)
    if buf:  # a stream cut without the final blank line still delivers its event
        yield "\n".join(buf)


@dataclass
class StreamEvent:
    """What one chunk means to the client."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    model: str | None = None
    done: bool = False


def parse_event(data: str) -> StreamEvent:
    """Interpret one event's data. Unknown fields are ignored; a body that is
    not JSON becomes an error event rather than an exception mid-answer."""
    if data.strip() == DONE:
        return StreamEvent(done=True)
    try:
        obj = json.loads(data)
    except json.JSONDecodeError:
        return StreamEvent(error={"message": f"malformed stream data: {data[:200]!r}"})
    if not isinstance(obj, dict):
        return StreamEvent(error={"message": f"unexpected stream data: {data[:200]!r}"})
    if "error" in obj:
        err = obj["error"]
        return StreamEvent(error=err if isinstance(err, dict) else {"message": str(err)})
    ev = StreamEvent(model=obj.get("model"))
    usage = obj.get("usage")
    if isinstance(usage, dict):
        ev.usage = usage
    for choice in obj.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue  # the client asks for one choice; ignore any others
        delta = choice.get("delta") or {}
        ev.content += delta.get("content") or ""
        # Servers name it differently: reasoning_content (DeepSeek, kmlx), reasoning.
        ev.reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
        if choice.get("finish_reason"):
            ev.finish_reason = choice["finish_reason"]
    return ev


def iter_events(lines: Iterable[str]) -> Iterator[StreamEvent]:
    """Stream events until ``[DONE]`` (which is yielded, then iteration stops)."""
    for data in iter_sse_data(lines):
        ev = parse_event(data)
        yield ev
        if ev.done:
            return
