"""GGUF quantized tensors as MLX affine-quantized triples (weight, scales, biases).

MLX's quantized kernels (Metal, CUDA, and the CPU fallback) take groups of 32,
64 or 128 weights, each `scale * code + bias` with a 2- to 8-bit code. Where a
GGUF type is exactly that with groups of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
Q4_K, Q5_K) its codes are repacked bit for bit and only the scales are
rounded to the storage dtype. The others (Q2_K, Q3_K, Q6_K scale every 16
weights; IQ4_NL and IQ4_XS use a non-linear codebook) are dequantized to
float32 and requantized by MLX with the bits in `REQUANTIZE`, chosen from
the logit errors measured by `bench/gguf_mapping.py` (docs/models.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .gguf_quants import Blocks, dequantize

# GGUF type -> bits of its exact MLX form (groups of 32).
EXACT = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "Q4_K": 4, "Q5_K": 5}
# GGUF type -> (bits, group size) of the requantized MLX form.
# The fewest bits that add about a tenth of the type's own error or less
# (docs/models.md has the measurements): 4 bits doubled IQ4's error and 6 bits
# were as far off as Q6_K itself.
REQUANTIZE = {
    "Q2_K": (5, 32),
    "Q3_K": (5, 32),
    "Q6_K": (8, 32),
    "IQ4_NL": (6, 32),
    "IQ4_XS": (6, 32),
}
# Rows packed per step: bounds the temporary bit array to ~64 MB.
_PACK_ELEMENTS = 1 << 23


@dataclass
class Affine:
    weight: Any  # mx.array uint32 (rows, cols * bits / 32)
    scales: Any  # mx.array (rows, cols / group_size), storage dtype
    biases: Any  # like scales
    bits: int
    group_size: int
    exact: bool  # codes repacked bit for bit (only the scales were rounded)


def mapping(type_name: str) -> tuple[int, int, bool]:
    """(bits, group size, exact) of a quantized GGUF type's MLX form."""
    if type_name in EXACT:
        return EXACT[type_name], 32, True
    bits, group = REQUANTIZE[type_name]
    return bits, group, False


def to_affine(blocks: Blocks, shape: tuple[int, int], type_name: str, dtype: Any,
              form: tuple[int, int] | None = None) -> Affine:
    """`blocks` of a (rows, cols) matrix in MLX form, scales and biases stored as `dtype`.

    form: (bits, group size) to requantize to instead of the type's own mapping
    (bench/gguf_mapping.py measures the alternatives).
    """
    import mlx.core as mx

    rows, cols = shape
    bits, group, exact = mapping(type_name)
    if form is not None and form != (bits, group):
        (bits, group), exact = form, False
    if exact:
        weight = mx.array(pack_codes(blocks.codes.reshape(rows, cols), bits))
        scales = mx.array(blocks.scale.reshape(rows, cols // group)).astype(dtype)
        biases = mx.array(blocks.affine_bias().reshape(rows, cols // group)).astype(dtype)
        return Affine(weight, scales, biases, bits, group, True)
    values = mx.array(dequantize(blocks).reshape(rows, cols))
    weight, scales, biases = mx.quantize(values, group_size=group, bits=bits)
    return Affine(weight, scales.astype(dtype), biases.astype(dtype), bits, group, False)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """(rows, cols) uint8 codes -> (rows, cols * bits / 32) uint32 in MLX's layout:
    one little-endian bit stream per row, each code's lowest bit first."""
    rows, cols = codes.shape
    if bits in (2, 4, 8):  # whole codes per byte: shift and add
        per_byte = 8 // bits
        grouped = codes.reshape(rows, cols // per_byte, per_byte).astype(np.uint8)
        shifts = (np.arange(per_byte, dtype=np.uint8) * bits)
        packed = np.bitwise_or.reduce(grouped << shifts, axis=-1).astype(np.uint8)
        return np.ascontiguousarray(packed).view("<u4")
    out = np.empty((rows, cols * bits // 8), np.uint8)
    step = max(1, _PACK_ELEMENTS // max(cols * bits, 1))
    shifts = np.arange(bits, dtype=np.uint8)
    for start in range(0, rows, step):
        chunk = codes[start : start + step]
        stream = ((chunk[..., None] >> shifts) & 1).reshape(chunk.shape[0], cols * bits)
        out[start : start + step] = np.packbits(stream, axis=1, bitorder="little")
    return out.view("<u4")
