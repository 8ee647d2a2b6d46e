"""llama: the GGUF llama.cpp's converter writes (q/k rows permuted for its
adjacent-pair rope, optional q/k/v biases, optional Llama-3.1 rope_freqs),
and its forward pass in float64."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from . import common

SHAPE = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 4, "kv_heads": 2}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write(path: Path, tokenizer_meta: dict[str, Any], *, types: tuple[Q, ...] = common.ALL_TYPES, seed: int = 7,
          shape: dict[str, int] = SHAPE, tied: bool = False, qkv_bias: bool = True, tokenizer_model: str = "gpt2",
          rope_freqs: np.ndarray | None = None, embed_type: Q = Q.Q8_0, output_type: Q = Q.Q4_0) -> Path:
    s = common.start(path, "llama", shape, tokenizer_meta, types, seed, tokenizer_model)
    h = shape["hidden"]
    s.writer.add_rope_dimension_count(h // shape["heads"])
    vocab = len(tokenizer_meta["tokenizer.ggml.tokens"])
    s.matrix("token_embd.weight", vocab, h, embed_type)
    common.write_llama_layers(s, shape, biases=qkv_bias, permute=llama_cpp_permute)
    if rope_freqs is not None:  # what llama.cpp writes for Llama-3.1 rope scaling
        s.add("rope_freqs.weight", np.asarray(rope_freqs), Q.F32)
    s.vector("output_norm.weight", h, mean=1.0)
    if not tied:
        s.matrix("output.weight", vocab, h, output_type)
    return common.finish(s, path)


def forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    return common.llama_forward(meta, w, ids, neox=False)
