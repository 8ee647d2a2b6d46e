"""Write small synthetic GGUF files (test helper), the way llama.cpp's converter would.

`write_llama` is the small llama most tests use; every architecture has its
own writer in tests/models/archs/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from tests.models.archs import llama

SHAPE = {"hidden": 64, "ffn": 128, "layers": 2, "heads": 4, "kv_heads": 2}
llama_cpp_permute = llama.llama_cpp_permute


def write_llama(
    path: Path,
    tokenizer_meta: dict[str, Any],
    *,
    types: tuple[Q, ...] = (Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.F16, Q.F32),
    tied: bool = False,
    qkv_bias: bool = True,
    tokenizer_model: str = "gpt2",
    rope_freqs: np.ndarray | None = None,
    seed: int = 7,
) -> Path:
    return llama.write(path, tokenizer_meta, types=types, seed=seed, shape=SHAPE, tied=tied, qkv_bias=qkv_bias,
                       tokenizer_model=tokenizer_model, rope_freqs=rope_freqs)


def write_raw(path: Path, arch: str, tensors: dict[str, tuple[Q, tuple[int, int]]], meta: dict[str, str]) -> Path:
    """A header-valid GGUF with zero-filled tensors of any type (for error tests)."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        w.add_string(key, value)
    for name, (qtype, (rows, cols)) in tensors.items():
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        w.add_tensor(name, np.zeros((rows, cols // block * size), np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
