"""qwen3: no biases, a head size of its own (not hidden/heads), per-head RMS
norms on q and k before NeoX rope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from . import common

SHAPE: dict[str, Any] = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 8, "kv_heads": 2, "head_dim": 64, "rope_base": 1000000.0}


def write(path: Path, tokenizer_meta: dict[str, Any], *, types: tuple[Q, ...] = common.ALL_TYPES, seed: int = 7,
          tied: bool = False, extra: dict[str, tuple[int, ...]] | None = None) -> Path:
    s = common.start(path, "qwen3", SHAPE, tokenizer_meta, types, seed)
    vocab = len(tokenizer_meta["tokenizer.ggml.tokens"])
    s.matrix("token_embd.weight", vocab, SHAPE["hidden"], Q.Q4_K)
    common.write_llama_layers(s, SHAPE, qk_norm=True)
    s.vector("output_norm.weight", SHAPE["hidden"], mean=1.0)
    if not tied:
        s.matrix("output.weight", vocab, SHAPE["hidden"], Q.Q6_K)
    for name, dims in (extra or {}).items():  # for the error tests: a tensor qwen3 has no place for
        s.add(name, np.zeros(dims), Q.F32)
    return common.finish(s, path)


def forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    return common.llama_forward(meta, w, ids, neox=True)
