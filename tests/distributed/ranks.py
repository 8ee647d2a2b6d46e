"""Start the ranks of a group on loopback, as ``mlx.launch --backend ring``
does on one host: one process per rank, each told its rank (``MLX_RANK``)
and the group's addresses (``MLX_HOSTFILE``, a JSON list per rank)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tests.support.processes import Proc, free_port, spawn


def ring_hostfile(directory: Path, size: int) -> Path:
    """A loopback ring of ``size`` ranks (ports free a moment ago: the ring
    backend takes addresses, not port 0)."""
    path = directory / f"ring-{size}-{free_port()}.json"
    path.write_text(json.dumps([[f"127.0.0.1:{free_port()}"] for _ in range(size)]))
    return path


def spawn_ranks(name: str, args: Sequence[str], log_dir: Path, *, size: int = 2) -> list[Proc]:
    """``python ARGS`` once per rank, joined in one ring group."""
    hostfile = ring_hostfile(log_dir, size)
    return [
        spawn(f"{name}-rank{rank}", list(args), log_dir, env={"MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)})
        for rank in range(size)
    ]
