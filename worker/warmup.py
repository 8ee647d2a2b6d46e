"""Warm-up before ready: run the shapes serving uses once, before the
worker answers a gateway's hello.

On a GPU backend the first call of each kernel compiles it (on an H200
through MLX's CUDA build the first requests after start waited 3.7-6.3 s,
issue #15); a Mac's Metal backend does the same, less. Until the worker has
answered the handshake the gateway does not count it ready and ``/health``
stays 503, so a load balancer sends nothing to a worker still compiling.

What runs, on the running batch itself (so a vision worker's view of its
model is warmed the same way), with dummy token ids:

- one prompt a full prefill chunk and more long, then decode at one
  sequence (matrix-vector shapes);
- a prefill batch of short prompts of different lengths (the padded,
  masked prefill; kernels are compiled per kind of shape, not per length,
  so short ones do and keep the warm-up cheap on a CPU), decoded together, one of them sampled with temperature and
  asking for log-probabilities (the categorical and log-softmax kernels);
- decode at ``max_running`` sequences, when that is more than the above.

A few steps each; the sequences are removed when done (the scheduler
renders one chat prompt first: the template compiles on first use).
``--warm-up auto`` (the default) runs it on a GPU only. On this 2-core
CPU it did not pay: with SmolLM2 (Q4 weights) the first request after
start took 5.3 s with it against a steady 5.1 s (a busy machine; every
request is that slow there), so there was no first-request cost to move,
while the warm-up took ~30 s. ``--warm-up on|off``
forces it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import mlx.core as mx

from . import failpoints
from .batch import Batch, SequenceSpec

log = logging.getLogger("kmlx.worker.warmup")

DECODE_STEPS = 3  # tokens per warm-up sequence: the first decode steps plus the pipelined one
PREFILL_BATCH = 8  # mlx-lm's prompt batch takes up to this many prompts at once (worker/batch.py)


def _sampled(scores: mx.array) -> mx.array:
    return mx.random.categorical(scores * 1.4)


def warm_up(batch: Batch, *, max_running: int, prefill_chunk: int, vocab_size: int) -> float:
    """Run the warm-up rounds on ``batch``; the seconds they took."""
    t0 = time.perf_counter()
    failpoints.hit("warm_up")
    ids = list(range(1, max(2, min(vocab_size, 1000))))  # any valid ids: only the shapes matter

    def prompt(length: int) -> list[int]:
        return [ids[i % len(ids)] for i in range(length)]

    together = max(1, min(max_running, PREFILL_BATCH))
    rounds: list[list[SequenceSpec]] = [
        [SequenceSpec(prompt(prefill_chunk + 2), max_tokens=DECODE_STEPS, stop_on_eos=False)],
        [
            SequenceSpec(
                prompt(2 + i), max_tokens=DECODE_STEPS, stop_on_eos=False,
                sampler=_sampled if i == 0 else None, logprobs=i == 0,
            )
            for i in range(together)
        ],
    ]
    if max_running > together:
        rounds.append([SequenceSpec(prompt(4), max_tokens=DECODE_STEPS, stop_on_eos=False) for _ in range(max_running)])
    for specs in rounds:
        _run(batch, specs, lambda: time.perf_counter() - t0)
    return time.perf_counter() - t0


def _run(batch: Batch, specs: list[SequenceSpec], elapsed: Callable[[], float]) -> None:
    uids = {batch.add(s) for s in specs}
    pending = set(uids)
    # A bound: each sequence prefills in at most len/chunk + 1 steps, then decodes DECODE_STEPS tokens.
    for _ in range(64 + sum(len(s.tokens) for s in specs)):
        if not pending:
            break
        for t in batch.step().tokens:
            if t.finish is not None:
                pending.discard(t.uid)
    if pending:  # never expected; leave the batch empty for serving either way
        log.warning("warm-up: %d sequence(s) did not finish after %.1f s; removed", len(pending), elapsed())
        batch.remove(sorted(pending))
