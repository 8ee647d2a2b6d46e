"""GGML tensor types: their block layouts, decoded with NumPy exactly as llama.cpp does.

Every quantized type kmlx reads is split into its parts (`Blocks`): one
unsigned integer code per weight and a float32 scale (and bias) per group of
16 or 32 weights, plus a codebook for the non-linear IQ4 types. From the parts
come both forms kmlx runs: float32 values, computed in float32 in llama.cpp's
own order (`dequantize`), and MLX affine triples (`gguf_affine`).

Layouts follow llama.cpp's ggml-common.h; everything is vectorised over
blocks (a 7B model has tens of millions of them), never a Python loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    block: int  # weights per block
    nbytes: int  # bytes per block


@dataclass
class Blocks:
    """A quantized tensor as codes and per-group scales.

    value = scale * table[code]        when `table` is set (IQ4_NL, IQ4_XS)
          = scale * (code - zero)      when `bias` is None
          = scale * code + bias        otherwise
    """

    codes: np.ndarray  # uint8 (n_weights,), in row-major weight order
    scale: np.ndarray  # float32 (n_weights // group,)
    bias: np.ndarray | None  # float32 like scale, or None
    group: int  # weights sharing one scale
    bits: int  # width of a code
    zero: int = 0  # subtracted from the code before scaling (when bias is None)
    table: np.ndarray | None = None  # float32 codebook, indexed by code

    def affine_bias(self) -> np.ndarray:
        """The bias of the equivalent `scale * code + bias` form (exact in float32)."""
        if self.table is not None:
            raise ValueError("a codebook type has no affine form")
        if self.bias is not None:
            return self.bias
        return -np.float32(self.zero) * self.scale


FLOAT_TYPES = {
    0: GGMLType(0, "F32", 1, 4),
    1: GGMLType(1, "F16", 1, 2),
    30: GGMLType(30, "BF16", 1, 2),
}
QUANT_TYPES = {
    t.id: t
    for t in (
        GGMLType(2, "Q4_0", 32, 18),
        GGMLType(3, "Q4_1", 32, 20),
        GGMLType(6, "Q5_0", 32, 22),
        GGMLType(7, "Q5_1", 32, 24),
        GGMLType(8, "Q8_0", 32, 34),
        GGMLType(10, "Q2_K", 256, 84),
        GGMLType(11, "Q3_K", 256, 110),
        GGMLType(12, "Q4_K", 256, 144),
        GGMLType(13, "Q5_K", 256, 176),
        GGMLType(14, "Q6_K", 256, 210),
        GGMLType(20, "IQ4_NL", 32, 18),
        GGMLType(23, "IQ4_XS", 256, 136),
    )
}
SUPPORTED_TYPES = {**FLOAT_TYPES, **QUANT_TYPES}
# Named in error messages only.
OTHER_TYPES = {
    9: "Q8_1", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 21: "IQ3_S",
    22: "IQ2_S", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}

# The 16 levels of IQ4_NL / IQ4_XS (llama.cpp's kvalues_iq4nl).
IQ4_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)


def type_name(type_id: int) -> str:
    known = SUPPORTED_TYPES.get(type_id)
    return known.name if known else OTHER_TYPES.get(type_id, f"type#{type_id}")


def decode(raw: np.ndarray, type_id: int) -> Blocks:
    """Split raw block bytes (any shape, uint8) of a quantized type into codes and scales."""
    kind = QUANT_TYPES[type_id]
    b = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, kind.nbytes)
    with np.errstate(all="ignore"):  # a NaN/inf scale in a damaged file is the file's business
        return _DECODERS[kind.name](b)


def dequantize(blocks: Blocks) -> np.ndarray:
    """float32 weights, computed in float32 with llama.cpp's operations and order."""
    n_groups = blocks.scale.size
    scale = blocks.scale.reshape(n_groups, 1)
    codes = blocks.codes.reshape(n_groups, blocks.group)
    with np.errstate(all="ignore"):
        if blocks.table is not None:
            out = scale * blocks.table[codes]
        elif blocks.bias is None:
            out = scale * (codes.astype(np.int16) - blocks.zero).astype(np.float32)
        else:
            out = scale * codes.astype(np.float32) + blocks.bias.reshape(n_groups, 1)
    return out.reshape(-1)


def dequantize_raw(raw: np.ndarray, type_id: int) -> np.ndarray:
    """Any supported type's raw bytes -> float32 values (flat)."""
    if type_id == 0:
        return raw.reshape(-1).view("<f4").astype(np.float32)
    if type_id == 1:
        return raw.reshape(-1).view("<f2").astype(np.float32)
    if type_id == 30:  # bfloat16: the top half of a float32
        return (raw.reshape(-1).view("<u2").astype(np.uint32) << 16).view(np.float32)
    return dequantize(decode(raw, type_id))


# ---------------------------------------------------------------- field readers


def _f16(b: np.ndarray, at: int) -> np.ndarray:
    """The little-endian float16 at byte `at` of every block, as float32 (n, 1)."""
    return np.ascontiguousarray(b[:, at : at + 2]).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes (..., k) -> (..., 2k): all low nibbles, then all high nibbles (llama.cpp's order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(qs: np.ndarray, width: int, count: int) -> np.ndarray:
    """(..., k) bytes -> (..., count, k): field i holds bits [width*i, width*(i+1)) of each byte."""
    shifts = (np.arange(count, dtype=np.uint8) * width).reshape(count, 1)
    return (qs[..., None, :] >> shifts) & np.uint8((1 << width) - 1)


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1)


# ---------------------------------------------------------------- 32-weight blocks


def _q4_0(b: np.ndarray) -> Blocks:  # f16 d | 16 bytes of nibbles
    return Blocks(_flat(_nibbles(b[:, 2:18])), _flat(_f16(b, 0)), None, 32, 4, zero=8)


def _q4_1(b: np.ndarray) -> Blocks:  # f16 d | f16 m | 16 bytes of nibbles
    return Blocks(_flat(_nibbles(b[:, 4:20])), _flat(_f16(b, 0)), _flat(_f16(b, 2)), 32, 4)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """4 bytes = one little-endian uint32 whose bit j is the 5th bit of weight j."""
    return np.unpackbits(qh, axis=1, bitorder="little")  # byte k, bit i -> weight 8k+i


def _q5_0(b: np.ndarray) -> Blocks:  # f16 d | 4 bytes of high bits | 16 bytes of nibbles
    codes = _nibbles(b[:, 6:22]) | (_fifth_bits(b[:, 2:6]) << 4)
    return Blocks(_flat(codes), _flat(_f16(b, 0)), None, 32, 5, zero=16)


def _q5_1(b: np.ndarray) -> Blocks:  # f16 d | f16 m | 4 bytes of high bits | 16 bytes of nibbles
    codes = _nibbles(b[:, 8:24]) | (_fifth_bits(b[:, 4:8]) << 4)
    return Blocks(_flat(codes), _flat(_f16(b, 0)), _flat(_f16(b, 2)), 32, 5)


def _q8_0(b: np.ndarray) -> Blocks:  # f16 d | 32 int8
    codes = (b[:, 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return Blocks(_flat(codes), _flat(_f16(b, 0)), None, 32, 8, zero=128)


def _iq4_nl(b: np.ndarray) -> Blocks:  # f16 d | 16 bytes of nibbles indexing IQ4_LEVELS
    return Blocks(_flat(_nibbles(b[:, 2:18])), _flat(_f16(b, 0)), None, 32, 4, table=IQ4_LEVELS)


# ---------------------------------------------------------------- 256-weight super-blocks


def _q2_k(b: np.ndarray) -> Blocks:
    # 16 bytes of (min << 4 | scale) per 16 weights | 64 bytes of 2-bit codes | f16 d | f16 dmin
    sc = b[:, 0:16]
    # byte l of half h holds weights 128h + 32i + l at bits 2i
    codes = _bits(b[:, 16:80].reshape(-1, 2, 32), 2, 4)
    scale = _f16(b, 80) * (sc & 0x0F).astype(np.float32)
    bias = -(_f16(b, 82) * (sc >> 4).astype(np.float32))
    return Blocks(_flat(codes), _flat(scale), _flat(bias), 16, 2)


def _q3_k(b: np.ndarray) -> Blocks:
    # 32 bytes of high bits | 64 bytes of 2-bit codes | 12 bytes of 6-bit scales | f16 d
    low = _bits(b[:, 32:96].reshape(-1, 2, 32), 2, 4)  # (n, half, i, l)
    high = _bits(b[:, 0:32], 1, 8).reshape(-1, 2, 4, 32)  # bit 4h+i of byte l
    codes = low | (high << 2)  # llama.cpp: low - (high ? 0 : 4) = code - 4
    s = b[:, 96:108]
    low4 = _nibbles(s[:, 0:8])  # scales 0-7 in the low nibbles, 8-15 in the high ones
    high2 = _bits(s[:, 8:12], 2, 4).reshape(-1, 16)  # scale 4i+k: bits 2i of byte 8+k
    sub = (low4 | (high2 << 4)).astype(np.int16) - 32
    scale = _f16(b, 108) * sub.astype(np.float32)
    return Blocks(_flat(codes), _flat(scale), None, 16, 3, zero=4)


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins (llama.cpp's get_scale_min_k4)."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q4_k(b: np.ndarray) -> Blocks:
    # f16 d | f16 dmin | 12 bytes of scales and mins | 128 bytes of nibbles (per 64 weights: 32 low, 32 high)
    sc, mn = _k_scales(b[:, 4:16])
    codes = _nibbles(b[:, 16:144].reshape(-1, 4, 32))
    return Blocks(_flat(codes), _flat(_f16(b, 0) * sc), _flat(-(_f16(b, 2) * mn)), 32, 4)


def _q5_k(b: np.ndarray) -> Blocks:
    # f16 d | f16 dmin | 12 bytes of scales | 32 bytes of 5th bits | 128 bytes of nibbles
    sc, mn = _k_scales(b[:, 4:16])
    low = _nibbles(b[:, 48:176].reshape(-1, 4, 32)).reshape(-1, 8, 32)
    high = _bits(b[:, 16:48], 1, 8)  # weight 32g + l: bit g of byte l
    codes = low | (high << 4)
    return Blocks(_flat(codes), _flat(_f16(b, 0) * sc), _flat(-(_f16(b, 2) * mn)), 32, 5)


def _q6_k(b: np.ndarray) -> Blocks:
    # 128 bytes of low nibbles | 64 bytes of high 2-bit pairs | 16 int8 scales | f16 d
    ql = b[:, 0:128].reshape(-1, 2, 2, 32)  # (n, half, pair, l)
    low = _bits(ql, 4, 2)  # (n, half, pair, nibble, l)
    low = low.transpose(0, 1, 3, 2, 4).reshape(-1, 2, 4, 32)  # quarter i = 2 * nibble + pair
    high = _bits(b[:, 128:192].reshape(-1, 2, 32), 2, 4)  # (n, half, i, l)
    codes = low | (high << 4)
    scale = _f16(b, 208) * b[:, 192:208].view(np.int8).astype(np.float32)
    return Blocks(_flat(codes), _flat(scale), None, 16, 6, zero=32)


def _iq4_xs(b: np.ndarray) -> Blocks:
    # f16 d | u16 high scale bits | 4 bytes of low scale nibbles | 128 bytes of nibbles (16 per 32 weights)
    high = _bits(b[:, 2:4], 2, 4).transpose(0, 2, 1).reshape(-1, 8)  # scale j: bits 2j of the u16
    low = _nibbles(b[:, 4:8])  # scale j: byte j//2, nibble j%2
    low = low.reshape(-1, 2, 4).transpose(0, 2, 1).reshape(-1, 8)
    ls = (low | (high << 4)).astype(np.int16) - 32
    codes = _nibbles(b[:, 8:136].reshape(-1, 8, 16))
    scale = _f16(b, 0) * ls.astype(np.float32)
    return Blocks(_flat(codes), _flat(scale), None, 32, 4, table=IQ4_LEVELS)


_DECODERS: dict[str, Callable[[np.ndarray], Blocks]] = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
    "IQ4_NL": _iq4_nl, "IQ4_XS": _iq4_xs,
}
