"""Shared fixtures: real models (built or fetched once) and real server stacks."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.support.processes import Stack, start_stack


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """A tiny random-weight llama with the default model's tokenizer."""
    from worker.models import build_tiny_model

    return build_tiny_model()


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The real default model (SmolLM2-135M-Instruct), fetched and converted once."""
    from worker.models import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def tiny_stack(tiny_model_path: Path, log_dir: Path) -> Iterator[Stack]:
    """One gateway + one worker on the tiny model, shared by tests that only
    send requests (tests that kill or restart processes make their own)."""
    stack = start_stack(tiny_model_path, log_dir)
    yield stack
    stack.stop()


@pytest.fixture
def make_stack(log_dir: Path) -> Iterator[Callable[..., Stack]]:
    """Factory for a private stack, stopped at the end of the test."""
    stacks: list[Stack] = []

    def make(model: Path, **kwargs) -> Stack:
        stack = start_stack(model, log_dir, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    for s in stacks:
        s.stop()
