"""One SmolLM2 stack for the API tests whose answers must read right."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.e2e import starts_processes
from tests.support.processes import Stack, start_stack


@pytest.fixture(scope="session")
@starts_processes
def smol_stack(default_model_path: Path, log_dir: Path) -> Iterator[Stack]:
    stack = start_stack(default_model_path, log_dir)
    yield stack
    stack.stop()
