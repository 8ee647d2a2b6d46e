"""qwen3: no biases, a head size of its own (not hidden/heads), per-head RMS
norms on q and k before NeoX rope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from . import common
from .qwen2 import neox_forward

SHAPE = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 8, "kv_heads": 2, "head_dim": 64, "rope_base": 1000000.0}


def write(path: Path, tokenizer_meta: dict[str, Any], *, types: tuple[Q, ...] = common.ALL_TYPES, seed: int = 7,
          tied: bool = False, extra: dict[str, tuple[int, ...]] | None = None) -> Path:
    shape = SHAPE
    s = common.start(path, "qwen3", shape, tokenizer_meta, types, seed)
    h, f, hd = shape["hidden"], shape["ffn"], shape["head_dim"]
    q_rows, kv_rows = shape["heads"] * hd, shape["kv_heads"] * hd
    vocab = len(tokenizer_meta["tokenizer.ggml.tokens"])
    s.matrix("token_embd.weight", vocab, h, Q.Q4_K)
    for i in range(shape["layers"]):
        p = f"blk.{i}."
        s.vector(p + "attn_norm.weight", h, mean=1.0)
        s.matrix(p + "attn_q.weight", q_rows, h)
        s.matrix(p + "attn_k.weight", kv_rows, h)
        s.matrix(p + "attn_v.weight", kv_rows, h)
        s.vector(p + "attn_q_norm.weight", hd, mean=1.0)
        s.vector(p + "attn_k_norm.weight", hd, mean=1.0)
        s.matrix(p + "attn_output.weight", h, q_rows)
        s.vector(p + "ffn_norm.weight", h, mean=1.0)
        s.matrix(p + "ffn_gate.weight", f, h)
        s.matrix(p + "ffn_up.weight", f, h)
        s.matrix(p + "ffn_down.weight", h, f)
    s.vector("output_norm.weight", h, mean=1.0)
    if not tied:
        s.matrix("output.weight", vocab, h, Q.Q6_K)
    for name, dims in (extra or {}).items():
        s.add(name, np.zeros(dims), Q.F32)
    return common.finish(s, path)


def forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    return neox_forward(meta, w, ids)
