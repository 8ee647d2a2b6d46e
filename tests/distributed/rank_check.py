"""One rank of the split check (run by tests/distributed/test_ranks.py, one
process per rank, joined over the ring backend on loopback).

Every rank loads its share of the model and runs the same prefill and
decode step through ``RankModel``; rank 0 also loads the whole model and
writes, as JSON to ``OUT``, how far its split logits are from the whole
model's, and what the channel carried.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import make_prompt_cache

from worker.distributed.group import Channel, join
from worker.distributed.model import RankModel, split
from worker.models import load_model

PROMPT = [[1, 17, 42, 99, 7, 3, 250, 12]]


def forward(model: object, tokens: list[list[int]], cache: list) -> mx.array:
    out = model(mx.array(tokens), cache=cache)  # type: ignore[operator]
    mx.eval(out, [c.state for c in cache])
    return out


def main(model_path: str, parallelism: str, out: str) -> None:
    group = join("ring")
    channel = Channel(group, generation_stream)
    big = bytes(range(256)) * 40  # more than one frame
    got = channel.broadcast(big if group.rank() == 0 else b"")
    agreed_all = channel.agree(True)
    agreed_one_fails = channel.agree(group.rank() != 1)

    stage: list[tuple[int, int] | None] = []
    loaded = load_model(model_path, vision=False, weights="float32",
                        split=lambda m: stage.append(split(m, group, parallelism)))  # type: ignore[arg-type]
    ranked = RankModel(loaded.model, group, stage=stage[0])
    cache = make_prompt_cache(loaded.model)
    prefill = forward(ranked, PROMPT, cache)
    decode = forward(ranked, [[5]], cache)
    if group.rank() != 0:
        return
    whole = load_model(model_path, vision=False, weights="float32").model
    ref_cache = make_prompt_cache(whole)
    ref_prefill = forward(whole, PROMPT, ref_cache)
    ref_decode = forward(whole, [[5]], ref_cache)
    Path(out).write_text(json.dumps({
        "size": group.size(),
        "broadcast_ok": got == big,
        "agreed_all": agreed_all,
        "agreed_one_fails": agreed_one_fails,
        "bytes": channel.bytes,
        "prefill_diff": float(mx.abs(prefill - ref_prefill).max()),
        "decode_diff": float(mx.abs(decode - ref_decode).max()),
        "same_argmax": bool(mx.array_equal(prefill.argmax(-1), ref_prefill.argmax(-1)))
        and bool(mx.array_equal(decode.argmax(-1), ref_decode.argmax(-1))),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:4])
