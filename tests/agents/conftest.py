"""Fixtures for agent features: the tiny model with a tool-aware template."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.agents.models import hermes_variant
from tests.support.e2e import starts_processes
from tests.support.processes import Stack, start_stack


@pytest.fixture(scope="session")
def hermes_model(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a Hermes-style template; greedy by its generation_config."""
    return hermes_variant(tiny_model_path, tmp_path_factory.mktemp("hermes") / "tiny-hermes", generation_config={"temperature": 0.0})


@pytest.fixture(scope="session")
@starts_processes
def hermes_stack(hermes_model: Path, log_dir: Path) -> Iterator[Stack]:
    stack = start_stack(hermes_model, log_dir, worker_args=["--chat-template-kwargs", '{"enable_thinking": false}'])
    yield stack
    stack.stop()


def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=120)
