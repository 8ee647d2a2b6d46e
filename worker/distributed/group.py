"""The rank group: how this process was launched, and rank 0's channel to the others.

``mlx.launch`` (or ``mpirun``) starts one process per rank and tells each,
through its environment, which backend to join and where its peers are.
``launched_backend`` reads that; ``join`` initialises the group with that
backend (strictly: a misconfigured launch fails loudly at start, it never
falls back to serving alone).

``Channel`` is every rank-0 -> rank message and every agreement: each call
is a collective, so all ranks make the same calls in the same order. The
calls run on mlx-lm's generation stream, behind the batch step still in
flight, so messages and the model's own collectives never interleave.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("kmlx.worker.distributed")

Parallelism = Literal["tensor", "pipeline"]
BACKENDS = ("ring", "jaccl", "mpi", "nccl")

FRAME_BYTES = 4096  # one collective carries a message up to this size; bigger ones take a second


@dataclass(frozen=True)
class Topology:
    """This process's place in the group."""

    rank: int
    size: int
    backend: str  # ring | jaccl | mpi | nccl
    parallelism: Parallelism

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size} ({self.parallelism} parallel over {self.backend})"


def launched_backend(env: Mapping[str, str] = os.environ) -> str | None:
    """The backend a launcher prepared this process for, or None when it
    was started on its own (the single-process worker)."""
    if "MLX_JACCL_COORDINATOR" in env or "MLX_IBV_DEVICES" in env:
        return "jaccl"
    if env.get("MLX_HOSTFILE") and "MLX_RANK" in env:
        return "ring"
    if "OMPI_COMM_WORLD_SIZE" in env or "PMI_SIZE" in env:
        return "mpi"
    if "NCCL_HOST_IP" in env and "MLX_WORLD_SIZE" in env:
        return "nccl"
    return None


def join(backend: str) -> Any:
    """Initialise ``mlx.distributed`` with ``backend``; the group."""
    import mlx.core as mx

    if backend not in BACKENDS:
        raise ValueError(f"unknown distributed backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not mx.distributed.is_available(backend=backend):
        raise RuntimeError(f"this MLX build has no {backend} backend")
    return mx.distributed.init(strict=True, backend=backend)


class GroupBroken(BaseException):
    """The ranks can no longer be known to agree (a rank died, a link
    dropped, or a step failed on one rank): the worker must stop. A
    BaseException, so no handler meant for one request's failure swallows it."""


class ChannelError(RuntimeError):
    """A collective failed: a rank died or the link dropped. The group can
    no longer be trusted to agree, so the worker stops (docs/distributed.md)."""


class Channel:
    """Rank 0 -> every rank: one byte message per call, and agreement on an
    outcome. Counts what it moves, for /v1/stats and the bench."""

    def __init__(self, group: Any, stream: Any):
        self.group = group
        self.stream = stream
        self.rank = group.rank()
        self.size = group.size()
        self.messages = 0
        self.bytes = 0  # payload bytes rank 0 sent

    def broadcast(self, payload: bytes = b"") -> bytes:
        """Rank 0's ``payload`` on every rank (the others pass nothing)."""
        import mlx.core as mx
        import numpy as np

        head = bytearray(FRAME_BYTES)
        if self.rank == 0:
            n = len(payload)
            head[:4] = n.to_bytes(4, "little")
            first = payload[: FRAME_BYTES - 4]
            head[4 : 4 + len(first)] = first
        frame = self._sum(mx.array(np.frombuffer(head, dtype=np.uint8)))
        data = bytes(memoryview(frame))
        n = int.from_bytes(data[:4], "little")
        body = data[4 : 4 + min(n, FRAME_BYTES - 4)]
        rest = n - len(body)
        if rest > 0:
            tail = mx.array(np.frombuffer(payload[FRAME_BYTES - 4 :], dtype=np.uint8)) if self.rank == 0 else mx.zeros((rest,), mx.uint8)
            body += bytes(memoryview(self._sum(tail)))
        self.messages += 1
        self.bytes += n
        return body

    def agree(self, ok: bool) -> bool:
        """True on every rank when ``ok`` is true on every rank."""
        import mlx.core as mx

        total = self._sum(mx.array([1 if ok else 0], dtype=mx.int32))
        return int(total.item()) == self.size

    def _sum(self, x: Any) -> Any:
        import mlx.core as mx

        try:
            out = mx.distributed.all_sum(x, group=self.group, stream=self.stream)
            mx.eval(out)
        except RuntimeError as exc:  # the backend's "connection to a peer was lost" and kin
            raise ChannelError(f"the rank group broke: {exc}") from exc
        return out
