"""`kmlx chat -p TEXT` and `... | kmlx chat`: one answer for scripts.

stdout gets the answer and nothing else; stats (with -v), thinking (with -v)
and errors go to stderr; the exit code says whether it worked.
"""

from __future__ import annotations

import sys
from typing import TextIO

from client.api import Gateway
from client.attachments import ParsedInput, build_content, parse_input
from client.conversation import Conversation
from client.errors import ClientError
from client.metrics import format_stats
from client.render import sanitize
from client.turn import ChatSettings, run_turn

EXIT_INTERRUPTED = 130  # the shell convention for SIGINT


class StreamSink:
    """Writes the answer to `out` as it arrives; thinking to `err` if wanted."""

    def __init__(self, out: TextIO, err: TextIO | None) -> None:
        self.out = out
        self.err = err
        self.last = ""

    def reasoning(self, text: str) -> None:
        if self.err is not None:
            self.err.write(sanitize(text))
            self.err.flush()

    def content(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        self.last = text[-1:] or self.last


def run_oneshot(
    gateway: Gateway,
    conv: Conversation,
    settings: ChatSettings,
    text: str,
    *,
    images: list[str] | None = None,
    parse_images: bool = True,
    verbose: bool = False,
    show_reasoning: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Ask once and return the process exit code. `parse_images` is off for
    stdin: piped documents may contain `image:` by accident."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        parsed = parse_input(text) if parse_images else ParsedInput(text=text.strip())
        parsed.images = list(images or []) + parsed.images
        if not parsed.text and not parsed.images:
            err.write("kmlx: error: empty prompt\n")
            return 1
        content = build_content(parsed)
        sink = StreamSink(out, err if (verbose and show_reasoning) else None)
        result = run_turn(gateway, conv, content, settings, sink)
    except ClientError as exc:
        out.flush()
        err.write(f"kmlx: error: {exc}\n")
        return exc.exit_code
    if sink.last and sink.last != "\n":
        out.write("\n")  # end the answer's line, like any well-behaved tool
    out.flush()
    if verbose and result.reasoning and show_reasoning:
        err.write("\n")
    if result.interrupted:
        err.write("kmlx: interrupted\n")
        return EXIT_INTERRUPTED
    if verbose:
        err.write(format_stats(result) + "\n")
    return 0
