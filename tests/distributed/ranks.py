"""Start the ranks of a group on loopback, as ``mlx.launch --backend ring``
does on one host: one process per rank, each told its rank (``MLX_RANK``)
and the group's addresses (``MLX_HOSTFILE``, a JSON list per rank)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tests.support.processes import Proc, Stack, free_port, reported, spawn, start_gateway, wait_healthy


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


def start_rank_stack(model: Path, log_dir: Path, *, worker_args: Sequence[str] = (), size: int = 2) -> Stack:
    """A gateway in front of a worker run as ``size`` ranks on loopback;
    ``Stack.workers`` holds every rank, rank 0 first."""
    ranks = spawn_ranks("worker", ["-m", "worker", "-m", str(model), "--bind", "tcp://127.0.0.1:0", "--name", "ranks", *worker_args],
                        log_dir, size=size)
    try:
        address = reported(ranks[0], r"listening on (tcp://127\.0\.0\.1:\d+)")
        gateway, root = start_gateway([address], log_dir)
    except Exception:
        for r in ranks:
            r.stop()
        raise
    stack = Stack(root, gateway, ranks, [address])
    try:
        wait_healthy(root, [gateway, *ranks], timeout=300)
    except Exception:
        stack.stop()
        raise
    return stack
