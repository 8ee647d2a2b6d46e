"""One worker as one process vs as two ranks (mlx.distributed, ring backend
on loopback), side by side in one run.

For each way of running the model — one process, two ranks tensor
parallel (split by heads, when they divide), two ranks pipeline (split by
layers) — a real gateway in front, the same load: one stream alone (the
per-token latency), then several together (the batch). Then what crosses
the link per decode step:

- **control**: rank 0's ops before each step (measured: the bytes it
  broadcast with steps, over the steps, from /v1/stats), plus the sampled
  tokens (4 bytes per sequence, all-reduced);
- **activations**: the model's own collectives, from its shapes: tensor
  parallel all-reduces the hidden state twice per layer, pipeline sends it
  once per stage boundary (per sequence and token, float32 here).

On one machine two ranks can only be slower: they share its cores and add
the link's round trips to every layer (tensor) or stage (pipeline). The
numbers say how much, not what two Macs would do (docs/distributed.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.distributed.ranks import start_rank_stack
from tests.support.processes import Stack, start_stack

from .pool import Load, load


@dataclass
class Way:
    name: str
    ranks: int
    args: tuple[str, ...] = ()


@dataclass
class Result:
    way: Way
    alone: Load
    together: Load
    stats: dict


def _shape(model: Path) -> dict:
    return json.loads((model / "config.json").read_text())


def ways(model: Path) -> list[Way]:
    c = _shape(model)
    out = [Way("1 process", 1)]
    if c["num_attention_heads"] % 2 == 0 and c.get("num_key_value_heads", 2) % 2 == 0:
        out.append(Way("2 ranks, tensor", 2))
    out.append(Way("2 ranks, pipeline", 2, ("--pipeline",)))
    return out


def activation_bytes(model: Path, way: Way) -> int:
    """Bytes one rank sends per sequence and decode step for the model's own collectives."""
    c = _shape(model)
    hidden = c["hidden_size"] * 4  # float32 on the CPU backend
    if way.ranks == 1:
        return 0
    if "--pipeline" in way.args:
        return hidden * (way.ranks - 1)
    # ring all-reduce: each rank sends 2 (n - 1) / n of the array, twice per layer
    return int(2 * c["num_hidden_layers"] * hidden * 2 * (way.ranks - 1) / way.ranks)


def measure(model: Path, logs: Path, way: Way, *, streams: int, max_tokens: int) -> Result:
    stack: Stack
    if way.ranks == 1:
        stack = start_stack(model, logs, worker_args=["--disable-kv-cache"])
    else:
        stack = start_rank_stack(model, logs, worker_args=way.args, size=way.ranks)
    try:
        load(stack.root_url, 2, 8)  # warm-up: kernels compiled on every rank
        alone = load(stack.root_url, 1, max_tokens)
        together = load(stack.root_url, streams, max_tokens)
        stats = stack.worker_stats()[0]
    finally:
        stack.stop()
    return Result(way, alone, together, stats)


def run(model: Path, *, max_tokens: int = 64, streams: int = 4) -> None:
    print(f"model: {model.name}   cores: {os.cpu_count()}   backend: ring on 127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(model, Path(tmp), w, streams=streams, max_tokens=max_tokens) for w in ways(model)]
    base = results[0]
    print(f"\n{'':20}{'1 stream tok/s':>15}{'vs 1 proc':>10}{f'{streams} streams tok/s':>18}{'vs 1 proc':>10}{'errors':>8}")
    for r in results:
        print(f"{r.way.name:20}{r.alone.tps:15.1f}{r.alone.tps / base.alone.tps:10.2f}"
              f"{r.together.tps:18.1f}{r.together.tps / base.together.tps:10.2f}{r.alone.errors + r.together.errors:8d}")
    print("\nper decode step, over the link (rank 0's control measured; activations from the model's shapes):")
    print(f"{'':20}{'control B/step':>15}{'+ tokens B/seq':>15}{'activations B/seq/rank':>24}")
    for r in results[1:]:
        d = r.stats["distributed"]
        print(f"{r.way.name:20}{d['control_bytes_per_step']:15.1f}{4:15d}{activation_bytes(model, r.way):24,d}")
    print("(control: the ops rank 0 broadcasts before each step — a frame of 4 KiB carries them, so the wire "
          "moves 4 KiB per step whatever they hold)")
