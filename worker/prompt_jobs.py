"""Chat templates and tokenization off the compute loop, sized first.

A prompt's size is the client's to choose (up to the gateway's body cap:
32 MB). Rendering and tokenizing one that size took ~27 s here, and on the
compute loop every running stream stood still for all of it; the token
list alone took the worker from 0.17 to 1.6 GB. So:

1. ``too_long`` refuses, before anything is rendered or tokenized, a
   request whose text cannot fit the context: more characters than the
   context length times the longest token in the vocabulary (in
   characters) times two (slack for normalizers that merge characters).
   No prompt that fits is refused this way; a refused one is answered in
   microseconds.
2. A prompt of more than ``INLINE_CHARS`` characters (schema of
   ``response_format`` included) is rendered, tokenized and its output
   grammar compiled on the prompt thread (``JobThread``) with its own copy
   of the tokenizer (a fast tokenizer must not be used from two threads at once:
   the compute loop detokenizes with the original); the compute loop picks
   the result up between steps. A smaller one is rendered in place: that
   is bounded work (a few milliseconds, less than one decode step), and it
   spares short requests the hop.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from protocol.chat import TextPart
from protocol.messages import ChatRequest, ErrorInfo

from .job_thread import Done, JobThread

log = logging.getLogger("kmlx.worker.prompt")

NORMALIZER_SLACK = 2  # a normalizer may merge characters (NFKC, collapsed spaces)
INLINE_CHARS = 8192  # rendered on the compute loop up to this size (~2k tokens, a few ms)


def longest_token_chars(tokenizer: Any) -> int:
    """Characters in the vocabulary's longest entry: an upper bound on the
    text one token stands for (byte-level entries spell one char per byte)."""
    try:
        return max((len(t) for t in tokenizer.get_vocab()), default=1) or 1
    except Exception:  # a tokenizer without a vocabulary view: assume a generous bound
        return 256


def text_chars(req: ChatRequest) -> int:
    """Characters the template and tokenizer would have to work through
    (message text, names, tool calls, tools; not media data URLs)."""
    if req.prompt is not None:
        return len(req.prompt) + len(req.suffix or "")
    total = _strings([req.tools, req.chat_template_kwargs])
    for m in req.messages:
        if isinstance(m.content, str):
            total += len(m.content)
        elif isinstance(m.content, list):
            total += sum(len(p.text) for p in m.content if isinstance(p, TextPart))
        total += _strings([m.role, m.name, m.tool_call_id, msgspec.to_builtins(m.tool_calls)])
    return total


def schema_chars(req: ChatRequest) -> int:
    """Size of the output schema (``response_format``): compiling its
    grammar is work that grows with it (~2 s for a 390 kB schema here)."""
    return _strings(req.response_format.schema) if req.response_format.schema else 0


def _strings(value: Any) -> int:
    """Total length of every string (keys too) in a JSON-like value, without recursion."""
    total, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return total


class PromptJobs:
    def __init__(self, tokenizer: Any, context_length: int):
        self.context_length = context_length
        self.max_chars = context_length * longest_token_chars(tokenizer) * NORMALIZER_SLACK
        self.tokenizer = copy.deepcopy(tokenizer)  # the prompt thread's own
        self._thread = JobThread("kmlx-prompt")

    def too_long(self, req: ChatRequest, n: int) -> ErrorInfo | None:
        """Refuse a prompt of ``n`` characters (``text_chars``) that cannot
        fit, without rendering or tokenizing it."""
        if n <= self.max_chars:
            return None
        what = "the messages are" if req.prompt is None else "the prompt is"
        return ErrorInfo(
            f"this model's maximum context length is {self.context_length} tokens; {what} {n} characters, "
            f"more than any {self.context_length}-token text can be ({self.max_chars} characters)",
            param="messages" if req.prompt is None else "prompt",
            code="context_length_exceeded",
        )

    def set_wake(self, wake: Callable[[], None]) -> None:
        self._thread.wake = wake

    def submit(self, request_id: str, job: Callable[[Any], Any]) -> None:
        """Run ``job(tokenizer)`` on the prompt thread with its tokenizer."""
        self._thread.submit(request_id, lambda: job(self.tokenizer))

    def cancel(self, request_id: str) -> None:
        self._thread.cancel(request_id)

    @property
    def has_done(self) -> bool:
        return self._thread.has_done

    def take_done(self) -> list[Done]:
        return self._thread.take_done()

    def close(self) -> None:
        self._thread.close()
