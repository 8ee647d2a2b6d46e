"""Mistral (7B, Nemo, Small): llama.cpp writes them as `llama` GGUFs. What
sets them apart from a Llama is the shape: Nemo and Small have a head size of
their own (`attention.key_length` 128 with a width of 5120 and 32 heads, not
5120/32), 8 key/value heads for 32 (or 4:1 here), rope base 1e6, no biases and
an untied output. Its forward pass is llama's, reading that head size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from . import common
from .llama import llama_cpp_permute

# head_dim 128 (Nemo's) where hidden/heads would be 64: a converter that derives
# the head size from the width fails to load it. (K-quant rows are 256 long.)
SHAPE: dict[str, Any] = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 4, "kv_heads": 1, "head_dim": 128,
                         "rope_base": 1000000.0, "context": 32768}


def write(path: Path, tokenizer_meta: dict[str, Any], *, types: tuple[Q, ...] = common.ALL_TYPES, seed: int = 7,
          tokenizer_model: str = "gpt2") -> Path:
    s = common.start(path, "llama", SHAPE, tokenizer_meta, types, seed, tokenizer_model)
    h = SHAPE["hidden"]
    s.writer.add_rope_dimension_count(SHAPE["head_dim"])
    vocab = len(tokenizer_meta["tokenizer.ggml.tokens"])
    s.matrix("token_embd.weight", vocab, h, Q.Q6_K)
    common.write_llama_layers(s, SHAPE, permute=llama_cpp_permute)
    s.vector("output_norm.weight", h, mean=1.0)
    s.matrix("output.weight", vocab, h, Q.Q4_K)
    return common.finish(s, path)


def forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    return common.llama_forward(meta, w, ids, neox=False)
