"""qwen2: q/k/v biases, NeoX rope on unpermuted rows, usually tied embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from . import common

SHAPE = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 4, "kv_heads": 2, "rope_base": 1000000.0}


def write(path: Path, tokenizer_meta: dict[str, Any], *, types: tuple[Q, ...] = common.ALL_TYPES, seed: int = 7,
          tied: bool = True, extra: dict[str, tuple[int, ...]] | None = None) -> Path:
    shape = SHAPE
    s = common.start(path, "qwen2", shape, tokenizer_meta, types, seed)
    h, f, n_kv = shape["hidden"], shape["ffn"], shape["kv_heads"]
    kv = n_kv * h // shape["heads"]
    vocab = len(tokenizer_meta["tokenizer.ggml.tokens"])
    s.matrix("token_embd.weight", vocab, h, Q.Q6_K)
    for i in range(shape["layers"]):
        p = f"blk.{i}."
        s.vector(p + "attn_norm.weight", h, mean=1.0)
        for name, rows in (("attn_q", h), ("attn_k", kv), ("attn_v", kv)):
            s.matrix(p + name + ".weight", rows, h)
            s.vector(p + name + ".bias", rows)
        s.matrix(p + "attn_output.weight", h, h)
        s.vector(p + "ffn_norm.weight", h, mean=1.0)
        s.matrix(p + "ffn_gate.weight", f, h)
        s.matrix(p + "ffn_up.weight", f, h)
        s.matrix(p + "ffn_down.weight", h, f)
    s.vector("output_norm.weight", h, mean=1.0)
    if not tied:
        s.matrix("output.weight", vocab, h, Q.Q8_0)
    for name, dims in (extra or {}).items():
        s.add(name, np.zeros(dims), Q.F32)
    return common.finish(s, path)


def forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    return neox_forward(meta, w, ids)


def neox_forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """The llama block with NeoX rope, optional q/k/v biases and optional per-head q/k norms (qwen3)."""
    hp = common.hparams(meta)
    x = w["token_embd.weight"][ids]
    t, hd = len(ids), hp["head_dim"]
    for i in range(hp["layers"]):
        p = f"blk.{i}."
        h = common.rms_norm(x, w[p + "attn_norm.weight"], hp["eps"])
        q, k, v = (h @ w[p + f"attn_{n}.weight"].T + w.get(p + f"attn_{n}.bias", 0.0) for n in "qkv")
        q, k = q.reshape(t, hp["heads"], hd), k.reshape(t, hp["kv_heads"], hd)
        if p + "attn_q_norm.weight" in w:
            q = common.rms_norm(q, w[p + "attn_q_norm.weight"], hp["eps"])
            k = common.rms_norm(k, w[p + "attn_k_norm.weight"], hp["eps"])
        q, k = common.rope(q, hp["base"], neox=True), common.rope(k, hp["base"], neox=True)
        attn = common.attention(q, k, v.reshape(t, hp["kv_heads"], hd), scale=hd**-0.5)
        x = x + attn @ w[p + "attn_output.weight"].T
        h = common.rms_norm(x, w[p + "ffn_norm.weight"], hp["eps"])
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + (common.silu(gate) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = common.rms_norm(x, w["output_norm.weight"], hp["eps"])
    return x @ w.get("output.weight", w["token_embd.weight"]).T
