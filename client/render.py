"""Terminal rendering for the REPL (rich).

Tokens are written raw as they arrive -- one write and flush per chunk, no
layout work -- so rendering never slows the stream. When the answer is done
and it fits on the screen, it is redrawn once as Markdown (optional).
"""

from __future__ import annotations

import re

from rich.color import ColorSystem
from rich.console import Console
from rich.markdown import Markdown
from rich.style import Style
from rich.text import Text

# C0 controls other than tab/newline (and DEL): a model must not be able to
# move the cursor or retitle the terminal by printing escape sequences.
_CONTROL = {c: None for c in [*range(0, 9), *range(11, 32), 127]}

_MARKDOWN_HINTS = re.compile(
    r"(^#{1,6}\s|\*\*|__|`|^\s*[-*+]\s|^\s*\d+\.\s|^>\s|\|.*\||\[[^\]]+\]\([^)]+\))",
    re.MULTILINE,
)


def sanitize(text: str) -> str:
    return text.translate(_CONTROL)


def looks_like_markdown(text: str) -> bool:
    return bool(_MARKDOWN_HINTS.search(text))


def rows_used(text: str, width: int) -> int:
    """Terminal rows `text` occupies when printed from column 0 at `width`.
    Simulated cell by cell: a wide character that does not fit at the end of
    a row moves whole to the next, and a row filled exactly keeps the cursor
    (terminals defer the wrap)."""
    from rich.cells import get_character_cell_size

    width = max(1, width)
    total = 0
    for line in text.split("\n"):
        rows, col = 1, 0
        for ch in line.expandtabs(8):
            w = get_character_cell_size(ch)
            if col + w > width:
                rows, col = rows + 1, 0
            col += w
        total += rows
    return total


class TerminalRenderer:
    """The REPL's sink: raw streaming, dimmed reasoning, notices and stats."""

    def __init__(self, console: Console, *, show_reasoning: bool = True, markdown: bool = True) -> None:
        self.console = console
        self.show_reasoning = show_reasoning
        self.markdown = markdown
        self._dim = Style(dim=True)
        self._begin_turn()

    def _begin_turn(self) -> None:
        # Lists, not `str +=`: a long answer must not cost quadratic copying.
        self._written: list[str] = []  # everything written raw this turn, for the redraw
        self._tail = ""  # the last characters written (newline bookkeeping)
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._in_reasoning = False

    # -- raw output ------------------------------------------------------- #

    def _write(self, text: str, dim: bool = False) -> None:
        if not text:
            return
        self._written.append(text)
        self._tail = (self._tail + text)[-2:]
        # Dim carries no colour, so any colour system renders it alike; None (not a terminal) means plain.
        color_system = None if self.console.color_system is None else ColorSystem.STANDARD
        out = self._dim.render(text, color_system=color_system) if dim else text
        self.console.file.write(out)
        self.console.file.flush()

    # -- Sink ----------------------------------------------------------------- #

    def reasoning(self, text: str) -> None:
        text = sanitize(text)
        self._reasoning.append(text)
        if self.show_reasoning:
            if not self._written:
                text = text.lstrip("\n")
            self._in_reasoning = True
            self._write(text, dim=True)

    def content(self, text: str) -> None:
        text = sanitize(text)
        if not self._content:
            if self._reasoning:
                text = text.lstrip("\n")
                if not text:
                    return  # blank lines between thinking and answer: ours follow
            if self._in_reasoning:
                # Separate the thinking from the answer by one blank line.
                trailing = len(self._tail) - len(self._tail.rstrip("\n"))
                self._write("\n" * (2 - trailing))
                self._in_reasoning = False
        self._content.append(text)
        self._write(text)

    # -- turn boundaries --------------------------------------------------- #

    def start(self) -> None:
        self._begin_turn()

    def finish(self, redraw: bool = True) -> None:
        """End the answer on its own line; redraw it as Markdown if wanted."""
        if redraw and self._can_redraw():
            self._redraw()
        elif self._written and not self._tail.endswith("\n"):
            self._write("\n")
        self._begin_turn()

    def _can_redraw(self) -> bool:
        c = self.console
        if not (self.markdown and c.is_terminal and c.color_system and self._content):
            return False
        if not looks_like_markdown("".join(self._content)):
            return False  # nothing would change; avoid a flicker
        # Only what is still on screen can be erased; scrollback cannot.
        return rows_used("".join(self._written), c.width) < c.height - 1

    def _redraw(self) -> None:
        up = rows_used("".join(self._written), self.console.width) - 1
        self.console.file.write("\r" + (f"\x1b[{up}A" if up > 0 else "") + "\x1b[J")
        reasoning = "".join(self._reasoning).strip()
        if self.show_reasoning and reasoning:
            self.console.print(Text(reasoning, style="dim"))
            self.console.print()
        self.console.print(Markdown("".join(self._content)))

    # -- messages between turns ---------------------------------------------- #

    def notice(self, text: str) -> None:
        self.console.print(Text(text, style="dim"))

    def stats(self, text: str) -> None:
        # One logical line (let the terminal wrap it) so it stays greppable.
        self.console.print(Text(text, style="dim cyan"), soft_wrap=True)

    def error(self, text: str) -> None:
        self.console.print(Text(text, style="bold red"))
