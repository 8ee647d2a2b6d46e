"""phi3: fused qkv and gate/up tensors, NeoX rope over part of each head
(Phi-4-mini rotates 3/4 of it), optional LongRoPE factor tensors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from . import common

SHAPE = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 4, "kv_heads": 2}
ROPE_DIMS = 48  # of 64
LONG_CONTEXT, ORIGINAL_CONTEXT = 131072, 4096


def write(path: Path, tokenizer_meta: dict[str, Any], *, types: tuple[Q, ...] = common.ALL_TYPES, seed: int = 7,
          longrope: bool = False, tokenizer_model: str = "gpt2") -> Path:
    shape = dict(SHAPE, context=LONG_CONTEXT if longrope else 4096)
    s = common.start(path, "phi3", shape, tokenizer_meta, types, seed, tokenizer_model)
    h, f = shape["hidden"], shape["ffn"]
    hd = h // shape["heads"]
    s.writer.add_rope_dimension_count(ROPE_DIMS)
    s.writer.add_sliding_window(2047)  # as Phi-3-mini's files have it; llama.cpp ignores it
    if longrope:
        s.writer.add_rope_scaling_orig_ctx_len(ORIGINAL_CONTEXT)
        s.writer.add_rope_scaling_attn_factors(attn_factor())
        s.add("rope_factors_long.weight", 1 + 3 * s.rng.random(ROPE_DIMS // 2), Q.F32)
        s.add("rope_factors_short.weight", 1 + 0.1 * s.rng.random(ROPE_DIMS // 2), Q.F32)
    vocab = len(tokenizer_meta["tokenizer.ggml.tokens"])
    s.matrix("token_embd.weight", vocab, h, Q.Q4_K)
    for i in range(shape["layers"]):
        p = f"blk.{i}."
        s.vector(p + "attn_norm.weight", h, mean=1.0)
        s.matrix(p + "attn_qkv.weight", h + 2 * shape["kv_heads"] * hd, h)
        s.matrix(p + "attn_output.weight", h, h)
        s.vector(p + "ffn_norm.weight", h, mean=1.0)
        s.matrix(p + "ffn_up.weight", 2 * f, h)  # gate rows, then up rows
        s.matrix(p + "ffn_down.weight", h, f)
    s.vector("output_norm.weight", h, mean=1.0)
    s.matrix("output.weight", vocab, h, Q.Q6_K)
    return common.finish(s, path)


def attn_factor() -> float:
    return math.sqrt(1 + math.log(LONG_CONTEXT / ORIGINAL_CONTEXT) / math.log(ORIGINAL_CONTEXT))


def forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    hp = common.hparams(meta)
    t, hd, n_head, n_kv = len(ids), hp["head_dim"], hp["heads"], hp["kv_heads"]
    rope: dict[str, Any] = {"neox": True, "n_rot": int(meta["phi3.rope.dimension_count"])}
    if "rope_factors_long.weight" in w:  # llama.cpp with a context past the original one
        rope |= {"freq_factors": w["rope_factors_long.weight"], "mscale": float(meta["phi3.rope.scaling.attn_factor"])}
    x = w["token_embd.weight"][ids]
    for i in range(hp["layers"]):
        p = f"blk.{i}."
        h = common.rms_norm(x, w[p + "attn_norm.weight"], hp["eps"])
        qkv = h @ w[p + "attn_qkv.weight"].T
        q, k, v = np.split(qkv, [n_head * hd, (n_head + n_kv) * hd], axis=1)
        q = common.rope(q.reshape(t, n_head, hd), hp["base"], **rope)
        k = common.rope(k.reshape(t, n_kv, hd), hp["base"], **rope)
        attn = common.attention(q, k, v.reshape(t, n_kv, hd), scale=hd**-0.5)
        x = x + attn @ w[p + "attn_output.weight"].T
        h = common.rms_norm(x, w[p + "ffn_norm.weight"], hp["eps"])
        gate, up = np.split(h @ w[p + "ffn_up.weight"].T, 2, axis=1)
        x = x + (common.silu(gate) * up) @ w[p + "ffn_down.weight"].T
    x = common.rms_norm(x, w["output_norm.weight"], hp["eps"])
    return x @ w["output.weight"].T
