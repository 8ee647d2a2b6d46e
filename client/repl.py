"""The interactive `kmlx chat` loop (prompt_toolkit for input, rich for output).

Keys: Enter sends, Alt-Enter (or Esc Enter) adds a line, text opened with
triple quotes continues until they close; Ctrl-N starts a new conversation;
Ctrl-C stops a running answer (closing the stream aborts it on the server),
clears a typed line, and pressed again at an empty prompt quits, as does
Ctrl-D. Input history persists across sessions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.filters import is_searching
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from rich.console import Console

from client.api import Gateway
from client.attachments import build_content, parse_input
from client.config import ensure_private_file
from client.conversation import Conversation
from client.errors import ClientError
from client.metrics import format_stats
from client.render import TerminalRenderer
from client.turn import ChatSettings, run_turn

PROMPT = ">>> "
CONTINUATION = "... "
FENCE = '"""'

HELP = """\
Enter sends · Alt-Enter adds a line · \"\"\" starts a multi-line block (close it with \"\"\")
Ctrl-N new conversation · Ctrl-C stops an answer · Ctrl-C twice or Ctrl-D quits
image:PATH attaches an image (quote paths with spaces: image:"~/My Pictures/a.png")
/new  new conversation      /verbose  toggle stats      /id  show conversation id
/help this help             /quit     leave"""


@dataclass
class _NewConversation:
    """Ctrl-N pressed; `text` is what was typed, kept for the next prompt."""

    text: str


class _Interrupt:
    """Ctrl-C pressed at an empty prompt."""


INTERRUPT = _Interrupt()


def _fence_open(text: str) -> bool:
    return text.lstrip().startswith(FENCE) and text.count(FENCE) % 2 == 1


def key_bindings() -> KeyBindings:
    kb = KeyBindings()

    @kb.add("enter", filter=~is_searching)  # in Ctrl-R search, Enter picks the match
    def _enter(event: KeyPressEvent) -> None:
        buf = event.current_buffer
        if _fence_open(buf.text):
            buf.insert_text("\n")
        else:
            buf.validate_and_handle()

    @kb.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    @kb.add("c-n")
    def _new(event: KeyPressEvent) -> None:
        event.app.exit(result=_NewConversation(event.current_buffer.text))

    @kb.add("c-c")
    def _interrupt(event: KeyPressEvent) -> None:
        buf = event.current_buffer
        if buf.text:
            buf.reset()  # like a shell: Ctrl-C drops the line being typed
        else:
            event.app.exit(result=INTERRUPT)

    return kb


def _strip_fence(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith(FENCE) and stripped.endswith(FENCE) and len(stripped) >= 6:
        return stripped[3:-3].strip("\n")
    return text


class Repl:
    def __init__(
        self,
        gateway: Gateway,
        conv: Conversation,
        settings: ChatSettings,
        *,
        console: Console | None = None,
        verbose: bool = False,
        show_reasoning: bool = True,
        markdown: bool = True,
        history_file: Path | None = None,
    ) -> None:
        self.gateway = gateway
        self.conv = conv
        self.settings = settings
        self.console = console or Console()
        self.verbose = verbose
        self.out = TerminalRenderer(self.console, show_reasoning=show_reasoning, markdown=markdown)
        self.history_file = history_file

    def _history(self) -> History:
        if self.history_file is None:
            return InMemoryHistory()
        try:
            return FileHistory(str(ensure_private_file(self.history_file)))
        except OSError as exc:  # a read-only home must not stop the chat
            self.out.notice(f"(input history not saved: {exc})")
            return InMemoryHistory()

    def banner(self) -> None:
        model = self.settings.model or "(gateway default)"
        self.console.print(f"[bold]kmlx chat[/] · {model} · {self.gateway.base_url}", highlight=False)
        self.out.notice(f"conversation {self.conv.id} · /help for keys and commands · Ctrl-D to quit")

    def run(self) -> int:
        session: PromptSession[object] = PromptSession(
            multiline=True,
            prompt_continuation=CONTINUATION,
            history=self._history(),
            key_bindings=key_bindings(),
            enable_open_in_editor=True,  # Ctrl-X Ctrl-E: compose in $EDITOR
        )
        self.banner()
        try:
            self._loop(session)
        except (KeyboardInterrupt, asyncio.CancelledError):
            # Ctrl-C between prompts (cooked terminal, e.g. right after an
            # answer stopped): in practice a second Ctrl-C, so leave quietly.
            pass
        return 0

    def _loop(self, session: PromptSession[object]) -> None:
        armed = False  # a Ctrl-C just happened; one more at the prompt quits
        default = ""
        while True:
            try:
                result = session.prompt(PROMPT, default=default)
            except EOFError:
                return
            except (KeyboardInterrupt, asyncio.CancelledError):
                # Ctrl-C that did not reach our binding; while prompt_toolkit
                # is still starting its event loop it surfaces as a cancelled
                # asyncio.run (seen with a quick second Ctrl-C under load).
                result = INTERRUPT
            default = ""
            if result is INTERRUPT:
                if armed:
                    return
                armed = True
                self.out.notice("(Ctrl-C again or Ctrl-D to quit)")
                continue
            armed = False
            if isinstance(result, _NewConversation):
                self.new_conversation()
                default = result.text
                continue
            text = str(result)
            if text.strip().startswith("/") and "\n" not in text.strip():
                if self.command(text.strip()):
                    return
                continue
            armed = self.ask(_strip_fence(text))

    def new_conversation(self) -> None:
        self.conv.reset()
        self.out.notice(f"(new conversation {self.conv.id})")

    def command(self, line: str) -> bool:
        """Handle a /command; True means quit."""
        name, _, _arg = line.partition(" ")
        name = name.lower()
        if name in ("/quit", "/exit", "/q"):
            return True
        if name in ("/new", "/reset"):
            self.new_conversation()
        elif name == "/verbose":
            self.verbose = not self.verbose
            self.out.notice(f"(verbose {'on' if self.verbose else 'off'})")
        elif name == "/id":
            self.out.notice(f"conversation {self.conv.id} · {self.conv.turns} turn(s)")
        elif name in ("/help", "/?"):
            self.console.print(HELP, highlight=False, markup=False)
        else:
            self.out.error(f"unknown command {name}; /help lists them")
        return False

    def ask(self, text: str) -> bool:
        """One turn; returns True when it was interrupted (arms the quit)."""
        if not text.strip():
            return False
        try:
            content = build_content(parse_input(text))
        except ClientError as exc:
            self.out.error(str(exc))
            return False
        if isinstance(content, list):
            n = sum(1 for p in content if p.get("type") == "image_url")
            self.out.notice(f"(attached {n} image{'s' if n != 1 else ''})")
        self.out.start()
        try:
            result = run_turn(self.gateway, self.conv, content, self.settings, self.out)
        except ClientError as exc:
            self.out.finish(redraw=False)
            self.out.error(str(exc))
            return False
        self.out.finish(redraw=not result.interrupted)
        if result.interrupted:
            self.out.notice("(stopped; this turn was not kept · Ctrl-C again or Ctrl-D to quit)")
            return True
        if result.finish_reason == "length" and not self.verbose:  # verbose says "finish length"
            self.out.notice("(answer cut at --max-tokens)")
        if self.verbose:
            self.out.stats(format_stats(result))
        self.console.print()  # a blank line between turns
        return False
