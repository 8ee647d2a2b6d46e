"""mlx-lm's ``BatchGenerator`` driven in-process: the ceiling a server on
top of it can reach.

Runs as its own long-lived process (``python -m bench.inprocess MODEL``),
like the servers it is compared with, so that an idle MLX in the measuring
process skews nothing and the runs can interleave with theirs. It reads one
JSON command per line on stdin and answers one JSON line on stdout:

    {"messages": [[...], ...], "max_tokens": 128, "temperature": 0.0}

renders each conversation with the model's chat template (not timed),
inserts them all at once and steps the batch until every sequence is done,
prefill included. EOS does not stop a sequence (as ``ignore_eos`` for
kmlx), so every stream generates exactly ``max_tokens``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def serve(model_path: str) -> None:
    from worker.models import ensure_fast_blas

    ensure_fast_blas()  # the BLAS the worker uses, before MLX loads
    from mlx_lm import load

    model, tokenizer = load(model_path)[:2]  # the weights as stored, as mlx_lm.server loads them
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        print(json.dumps(run(model, tokenizer, **command)), flush=True)


def run(
    model: Any, tokenizer: Any, *, messages: list[list[dict[str, Any]]], max_tokens: int, temperature: float = 0.0,
    prefill_step: int = 2048, prefill_batch: int = 8,
) -> dict[str, Any]:
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    prompts = [tokenizer.apply_chat_template(m, add_generation_prompt=True) for m in messages]
    sampler = make_sampler(temperature) if temperature > 0 else None  # one object: the batch samples in one call
    gen = BatchGenerator(
        model, completion_batch_size=max(len(prompts), 32), prefill_batch_size=prefill_batch, prefill_step_size=prefill_step,
        sampler=sampler,
    )
    t0 = time.perf_counter()
    uids = gen.insert(prompts, max_tokens=[max_tokens] * len(prompts))
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    tokens = dict.fromkeys(uids, 0)
    done: dict[int, float] = {}
    while len(done) < len(uids):
        _, responses = gen.next()
        now = time.perf_counter()
        for r in responses:
            first.setdefault(r.uid, now)
            last[r.uid] = now
            tokens[r.uid] += 1
            if r.finish_reason is not None:
                done[r.uid] = now
    seconds = time.perf_counter() - t0
    gen.close()
    streams = [
        {"sent": 0.0, "first": first[u] - t0, "last": last[u] - t0, "done": done[u] - t0, "tokens": tokens[u], "prompt_tokens": len(p)}
        for u, p in zip(uids, prompts)
    ]
    return {"streams": streams, "seconds": seconds}


if __name__ == "__main__":
    serve(sys.argv[1])
