"""How a worker process joins its rank group, and what rank 0 builds on it.

``join_ranks`` is the call the worker's start-up makes when a launcher
started it (``group.launched_backend``): the ``Ranks`` of this process — its place
(``Topology``), the MLX group, the channel, and the split to apply while the
model loads. Rank 0 then ``lead``s: it greets the others (same model, same
batch shape, or nobody starts) and hands the scheduler a mirrored batch;
every other rank runs ``follower.run_follower`` instead of serving.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from dataclasses import dataclass
from functools import partial
from typing import Any

from .group import Channel, Topology, join

log = logging.getLogger("kmlx.worker.distributed")


def add_distributed_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("distributed", "when started by mlx.launch (docs/distributed.md)")
    d.add_argument("--pipeline", action="store_true",
                   help="split the model by layers over the ranks (default: by attention heads, tensor parallel)")


@dataclass
class Ranks:
    topology: Topology
    group: Any
    channel: Channel
    stage: tuple[int, int] | None = None  # layers this rank runs (kmlx's own pipeline split)

    def split(self, model: Any) -> None:
        """Keep this rank's share (``load_model(split=...)``, before evaluation)."""
        from .model import split

        self.stage = split(model, self.group, self.topology.parallelism)

    def rank_model(self, model: Any, **kwargs: Any) -> Any:
        from .model import RankModel

        return RankModel(model, self.group, stage=self.stage, **kwargs)


def join_ranks(backend: str, *, pipeline: bool) -> Ranks | None:
    """Join the group this process was launched into with ``backend``
    (None: a group of one, which serves as a worker on its own)."""
    group = join(backend)
    if group.size() == 1:
        return None
    from mlx_lm.generate import generation_stream

    topology = Topology(group.rank(), group.size(), backend, "pipeline" if pipeline else "tensor")
    log.info("joined the group as %s", topology.describe())
    return Ranks(topology, group, Channel(group, generation_stream))


def config_hash(path: Any) -> str:
    """The model's config.json, hashed: every rank must load the same model."""
    try:
        with open(os.path.join(path, "config.json"), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        return ""


class Rank0:
    """What rank 0's serving loop needs from the group: the model and batch
    its scheduler drives (``start``), the idle heartbeat, stats, and the
    last word."""

    def __init__(self, ranks: Ranks, loaded: Any, args: argparse.Namespace):
        from .leader import Leader

        self.ranks = ranks
        self.loaded = loaded
        self.leader = Leader(ranks.channel)
        if not args.disable_kv_cache:
            log.warning("prompt caching is off: a distributed worker does not mirror the prompt cache across ranks yet")

    def start(self, tokenizer_hash: str, limits: Any) -> tuple[Any, Any]:
        """Greet the other ranks (same model, same split, or nobody starts)
        and tell them the batch's shape; the model and batch class for the scheduler."""
        from . import ops
        from .leader import ReplicatedBatch

        loaded, leader = self.loaded, self.leader
        leader.queue(ops.Hello(
            model_id=loaded.model_id, tokenizer_hash=tokenizer_hash, config_hash=config_hash(loaded.path),
            parallelism=self.ranks.topology.parallelism, max_running=limits.max_running, prefill_chunk=limits.prefill_chunk,
        ))
        leader.flush()
        if not leader.agree(True):
            raise SystemExit("kmlx-worker: the ranks did not load the same model (each rank's log says what differs)")

        def free_forward(inputs: Any) -> None:  # a forward outside the batch: every rank runs it
            leader.queue(ops.Forward(inputs.tolist()))
            leader.flush()

        model = self.ranks.rank_model(loaded.model, on_free_forward=free_forward)
        return model, partial(ReplicatedBatch, leader=leader)

    def idle(self) -> None:
        self.leader.idle()

    def stats(self) -> dict[str, Any]:
        t, ch, leader = self.ranks.topology, self.ranks.channel, self.leader
        return {
            "distributed": {
                "world_size": t.size,
                "backend": t.backend,
                "parallelism": t.parallelism,
                "messages": ch.messages,  # broadcasts from rank 0 (steps, heartbeats, the greeting)
                "control_bytes": ch.bytes,
                "steps": leader.steps,
                "control_bytes_per_step": round(leader.step_bytes / leader.steps, 1) if leader.steps else 0.0,
            }
        }

    def close(self, reason: str) -> None:
        self.leader.close(reason)
