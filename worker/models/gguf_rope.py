"""Recognize Llama-3 rope scaling from a GGUF's `rope_freqs` tensor.

llama.cpp's converter does not store Llama 3.1+'s rope-scaling parameters; it
bakes them into a per-frequency divisor tensor (`rope_freqs.weight`). mlx-lm
wants the parameters, so we find the standard ones that reproduce the tensor
and refuse (clearly) anything else rather than silently run the wrong rope.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .errors import ModelLoadError
from .gguf_file import GGUFInfo

_FACTORS = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
_LOW_HIGH = ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0))
_ORIGINAL_CONTEXTS = (8192, 4096, 2048, 16384, 32768)


def llama3_factors(dims: int, base: float, factor: float, low: float, high: float, original: int) -> np.ndarray:
    """The divisor per frequency pair that Llama-3 scaling applies (HF's formula)."""
    wavelen = 2 * np.pi * base ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
    smooth = (original / wavelen - low) / (high - low)
    medium = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, medium))


def rope_scaling_from_freqs(info: GGUFInfo, head_dim: int, base: float) -> dict[str, Any]:
    found = read_f32_tensor(info, "rope_freqs.weight")
    if found.shape != (head_dim // 2,):
        raise ModelLoadError(f"{info.path.name}: rope_freqs has {found.size} entries, expected {head_dim // 2}")
    for factor, (low, high), original in itertools.product(_FACTORS, _LOW_HIGH, _ORIGINAL_CONTEXTS):
        expected = llama3_factors(head_dim, base, factor, low, high, original)
        if np.allclose(found, expected, rtol=1e-4, atol=1e-6):
            return {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": original,
            }
    raise ModelLoadError(
        f"{info.path.name}: its rope frequency factors (rope_freqs) are not a Llama-3 scaling kmlx recognizes"
    )


def read_f32_tensor(info: GGUFInfo, name: str) -> np.ndarray:
    tensor = info.tensors[name]
    if tensor.type_name != "F32":
        raise ModelLoadError(f"{info.path.name}: {name} is {tensor.type_name}, expected F32")
    count = int(np.prod(tensor.shape)) if tensor.shape else 1
    return np.fromfile(info.path, dtype="<f4", count=count, offset=tensor.offset).astype(np.float64).reshape(tensor.shape)
