"""qwen2: q/k/v biases, NeoX rope on unpermuted rows, usually tied embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from . import common

SHAPE: dict[str, Any] = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 4, "kv_heads": 2, "rope_base": 1000000.0}


def write(path: Path, tokenizer_meta: dict[str, Any], *, types: tuple[Q, ...] = common.ALL_TYPES, seed: int = 7,
          tied: bool = True) -> Path:
    s = common.start(path, "qwen2", SHAPE, tokenizer_meta, types, seed)
    vocab = len(tokenizer_meta["tokenizer.ggml.tokens"])
    s.matrix("token_embd.weight", vocab, SHAPE["hidden"], Q.Q6_K)
    common.write_llama_layers(s, SHAPE, biases=True)
    s.vector("output_norm.weight", SHAPE["hidden"], mean=1.0)
    if not tied:
        s.matrix("output.weight", vocab, SHAPE["hidden"], Q.Q8_0)
    return common.finish(s, path)


def forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    return common.llama_forward(meta, w, ids, neox=True)
