"""The distributed worker's pure parts: the wire format of rank 0's ops,
the pipeline's stage bounds, and reading the launcher's environment."""

from __future__ import annotations

import pytest

from worker.distributed import ops
from worker.distributed.group import launched_backend
from worker.distributed.model import SplitError, stage_bounds


def test_ops_round_trip() -> None:
    batch: list[ops.Op] = [
        ops.Hello("m", "t", "c", "tensor", 16, 128),
        ops.Add(3, [1, 2, 3], [2], ops.TreeRef([9, 8]), 20, True),
        ops.Add(4, [5], [], ops.StateRef(2, 7), 1, False),
        ops.Add(5, [5], [], None, 1, False),
        ops.Step(), ops.Extract(3), ops.Remove([3, 4], True),
        ops.TreeInsert([1, 2], ops.FileRef(0)), ops.TreeDrop([1], True), ops.TreeClear(),
        ops.PrefixLoad([1]), ops.PrefixSave([1]), ops.PrefixRemove("ab"),
        ops.ConvSave("s", {"tokens": [1, 2], "ranks": {"save_id": "x"}}), ops.ConvLoad("s", None),
        ops.ConvDelete("s"), ops.ConvQuarantine("s"), ops.Forward([[0]]), ops.Heartbeat(), ops.Shutdown("bye"),
    ]
    assert ops.decode(ops.encode(batch)) == batch


def test_stage_bounds_rank0_holds_the_last_layers() -> None:
    assert [stage_bounds(30, r, 2) for r in range(2)] == [(15, 30), (0, 15)]
    assert [stage_bounds(7, r, 3) for r in range(3)] == [(4, 7), (2, 4), (0, 2)]
    with pytest.raises(SplitError):
        stage_bounds(1, 0, 2)


def test_launched_backend_reads_the_launcher_environment() -> None:
    assert launched_backend({}) is None
    assert launched_backend({"MLX_RANK": "0", "MLX_HOSTFILE": ""}) is None  # mlx.launch on one host
    assert launched_backend({"MLX_RANK": "1", "MLX_HOSTFILE": "/tmp/h"}) == "ring"
    assert launched_backend({"MLX_RANK": "1", "MLX_IBV_DEVICES": "/tmp/d", "MLX_JACCL_COORDINATOR": "10.0.0.1:1"}) == "jaccl"
    assert launched_backend({"OMPI_COMM_WORLD_SIZE": "2"}) == "mpi"
