"""Drive `kmlx chat` through a pseudo-terminal (pexpect), as a person would."""

from __future__ import annotations

import re
import sys

import pexpect

PROMPT = ">>>"  # prompt_toolkit draws the trailing space as a cursor move


def spawn_chat(env: dict[str, str], base_url: str, *args: str, timeout: float = 30) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "client", "chat", "--base-url", base_url, *args],
        env=env,
        encoding="utf-8",
        codec_errors="replace",
        timeout=timeout,
        dimensions=(40, 100),
    )
    child.expect_exact(PROMPT)
    return child


def say(child: pexpect.spawn, text: str) -> None:
    """Type a line and press Enter (a terminal sends CR for Enter)."""
    child.send(text)
    child.send("\r")


def matched(child: pexpect.spawn, group: int = 1) -> str:
    """A group of what the last ``expect`` of a regular expression matched."""
    assert isinstance(child.match, re.Match), child.match
    return str(child.match.group(group))


def finish(child: pexpect.spawn, timeout: float = 15) -> int:
    """Wait for the process to end; its exit status."""
    child.expect(pexpect.EOF, timeout=timeout)
    child.close()
    return child.exitstatus if child.exitstatus is not None else -(child.signalstatus or 0)
