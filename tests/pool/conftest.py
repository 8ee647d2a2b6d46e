"""Pools of real workers behind real gateways, all on loopback (tiny model)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.pool.support import Pool, start_pool
from tests.support.e2e import starts_processes

SECOND_MODEL = "kmlx-tiny-second"


@pytest.fixture(scope="session")
def second_model_path(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model under another folder name: a second served model id."""
    dest = tmp_path_factory.mktemp("models") / SECOND_MODEL
    shutil.copytree(tiny_model_path, dest)
    return dest


@pytest.fixture
@starts_processes
def make_pool(log_dir: Path) -> Iterator[Callable[..., Pool]]:
    """A private pool (see ``start_pool``), stopped at the end of the test."""
    pools: list[Pool] = []

    def make(workers: dict[str, Path], **kwargs) -> Pool:
        pool = start_pool(workers, log_dir, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for p in pools:
        p.stop()
