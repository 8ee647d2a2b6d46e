"""Fixtures for the terminal client's tests (tests/client)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.client_fake_gateway import FakeGateway
from tests.support.e2e import starts_processes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_gateway() -> Iterator[FakeGateway]:
    fake = FakeGateway().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
@starts_processes
def client_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running `kmlx` as a child: isolated state (history),
    no inherited gateway settings, a predictable terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KMLX_", "OPENAI_"))}
    env.update(
        XDG_STATE_HOME=str(tmp_path / "state"),
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
        LANG="C.UTF-8",
        LC_ALL="C.UTF-8",
        TERM="xterm-256color",
        COLUMNS="100",
        LINES="40",
        PROMPT_TOOLKIT_NO_CPR="1",  # a pty in tests never answers cursor queries
    )
    env.pop("NO_COLOR", None)
    return env
