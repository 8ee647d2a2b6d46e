"""Two ranks on loopback (the ring backend): each holds its share of the
model, and the split forward gives the whole model's logits — the tiny
llama split by heads (tensor parallel), the real model by layers
(pipeline: its 9 heads do not divide by 2)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.e2e import starts_processes
from tests.support.processes import Proc

from .ranks import spawn_ranks

DEADLINE = 300.0  # two model loads on a shared 2-core machine


@pytest.fixture
@starts_processes
def run_ranks(log_dir: Path, tmp_path: Path) -> Iterator[Callable[..., dict]]:
    started: list[Proc] = []

    def run(model: Path, parallelism: str) -> dict:
        out = tmp_path / f"{parallelism}.json"
        ranks = spawn_ranks(f"split-{parallelism}", ["-m", "tests.distributed.rank_check", str(model), parallelism, str(out)], log_dir)
        started.extend(ranks)
        for r in ranks:
            r.popen.wait(DEADLINE)
            assert r.popen.returncode == 0, r.log()[-3000:]
        return json.loads(out.read_text())

    yield run
    for r in started:
        r.stop()


def check(result: dict) -> None:
    assert result["size"] == 2
    assert result["broadcast_ok"] and result["bytes"] == 10240
    assert result["agreed_all"] is True and result["agreed_one_fails"] is False
    assert result["prefill_diff"] < 1e-4 and result["decode_diff"] < 1e-4
    assert result["same_argmax"]


def test_tensor_parallel_tiny_model_matches_the_whole_model(run_ranks: Callable[..., dict], tiny_model_path: Path) -> None:
    check(run_ranks(tiny_model_path, "tensor"))


def test_pipeline_real_model_matches_the_whole_model(run_ranks: Callable[..., dict], default_model_path: Path) -> None:
    check(run_ranks(default_model_path, "pipeline"))
