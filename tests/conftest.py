"""Shared fixtures: real models (built or fetched once) and real server stacks.

Tests that start processes are marked ``e2e`` (tests/support/e2e.py): the
fixtures here that start them say so, and their users are marked at
collection; `make test-fast` runs the rest (``-m "not e2e"``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.e2e import E2E, ProcessGuard, skip_e2e_module, starts_processes, uses_process_fixture
from tests.support.processes import Stack, start_fake_stack, start_stack
from worker.models import LoadedModel, ensure_fast_blas

# Before anything imports MLX: in-process tests then run float32 matmuls on
# OpenBLAS (when installed), as the worker does. Never re-exec pytest.
ensure_fast_blas(reexec=False)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    return True if skip_e2e_module(collection_path, config.getoption("markexpr") or "") else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if uses_process_fixture(item):
            item.add_marker(E2E)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    if item.get_closest_marker(E2E) is not None:
        return (yield)
    with ProcessGuard(item.nodeid):
        return (yield)


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
def tiny_loaded(tiny_model_path: Path) -> LoadedModel:
    """The tiny model loaded in this process, as the worker loads it."""
    from worker.models import load_model

    return load_model(str(tiny_model_path))


@pytest.fixture(scope="session")
def default_loaded() -> LoadedModel:
    """The default model loaded in this process, as the worker loads it here (float32 on CPU)."""
    from worker.models import load_model

    return load_model(None)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
@starts_processes
def tiny_stack(tiny_model_path: Path, log_dir: Path) -> Iterator[Stack]:
    """One gateway + one worker on the tiny model, shared by tests that only
    send requests (tests that kill or restart processes make their own)."""
    stack = start_stack(tiny_model_path, log_dir)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
@starts_processes
def capped_stack(tiny_model_path: Path, log_dir: Path) -> Iterator[Stack]:
    """A tiny-model stack whose completions stop at 4 tokens, one per test
    module: for the schemathesis modules, whose generated requests ask for
    huge completions."""
    stack = start_stack(tiny_model_path, log_dir, worker_args=["--max-tokens-limit", "4"])
    yield stack
    stack.stop()


@pytest.fixture
@starts_processes
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


@pytest.fixture
@starts_processes
def make_fake_stack(log_dir: Path) -> Iterator[Callable[..., Stack]]:
    """Factory for a gateway in front of a paced fake worker (``start_fake_stack``):
    for tests that need a request to still be running, whatever the CPU."""
    stacks: list[Stack] = []

    def make(**kwargs: Any) -> Stack:
        stack = start_fake_stack(log_dir, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    for s in stacks:
        s.stop()

