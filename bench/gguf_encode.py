"""Simple GGML block encoders, for measuring how kmlx maps GGUF types to MLX.

The `gguf` package quantizes Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 only. For the
K-quants and IQ4 this writes blocks from float weights with a min/max fit per
sub-block refined by least squares, or the best of a few scales (llama.cpp
searches harder and can weight by an importance matrix, so its blocks are
somewhat more accurate; the layouts, the number of levels and the scale
structure are the same, which is what the mapping's error depends on).
"""

from __future__ import annotations

import gguf
import numpy as np

from worker.models.gguf_quants import IQ4_LEVELS, QUANT_TYPES

_BY_NAME = {t.name: t for t in QUANT_TYPES.values()}


def encode(values: np.ndarray, type_name: str) -> np.ndarray:
    """float weights (any shape, size divisible by the block) -> raw blocks (n_blocks, bytes)."""
    kind = _BY_NAME[type_name]
    x = np.asarray(values, np.float32).reshape(-1, kind.block)
    if type_name in _ENCODERS:
        return _ENCODERS[type_name](x)
    return gguf.quants.quantize(x, gguf.GGMLQuantizationType(kind.id)).reshape(len(x), -1)


def _f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float16).reshape(-1, 1).view(np.uint8)


def _safe(x: np.ndarray) -> np.ndarray:
    return np.where(x == 0, 1.0, x)


def _affine_subblocks(x: np.ndarray, sub: int, levels: int, scale_levels: int) -> tuple:
    """Per sub-block `scale * code - min`: (codes, d, dmin, integer scales, integer mins)."""
    g = x.reshape(len(x), -1, sub)
    lo = np.minimum(g.min(-1), 0)
    scale, mn = (g.max(-1) - lo) / (levels - 1), -lo
    for _ in range(2):  # refit scale and min to the codes by least squares (min stays >= 0)
        q = np.clip(np.rint((g + mn[..., None]) / _safe(scale)[..., None]), 0, levels - 1)
        qm, xm = q.mean(-1), g.mean(-1)
        var = (q * q).mean(-1) - qm * qm
        a = np.where(var > 0, ((q * g).mean(-1) - qm * xm) / _safe(var), scale)
        b = xm - a * qm
        through_zero = np.where((q * q).sum(-1) > 0, (q * g).sum(-1) / _safe((q * q).sum(-1)), scale)
        scale, mn = np.where(b > 0, through_zero, a), np.where(b > 0, 0.0, -b)
        scale = np.maximum(scale, 0)
    d = (scale.max(-1, keepdims=True) / scale_levels).astype(np.float16).astype(np.float32)
    dmin = (mn.max(-1, keepdims=True) / scale_levels).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(scale / _safe(d)), 0, scale_levels).astype(np.uint8)
    m = np.clip(np.rint(mn / _safe(dmin)), 0, scale_levels).astype(np.uint8)
    step = (d * sc)[..., None]
    q = np.clip(np.rint((g + (dmin * m)[..., None]) / _safe(step)), 0, levels - 1).astype(np.uint8)
    return q.reshape(len(x), -1), d, dmin, sc, m


def _symmetric_subblocks(x: np.ndarray, sub: int, low: int, high: int, scale_max: int) -> tuple:
    """Signed codes in [low, high] per sub-block: (codes - low, d, integer scales)."""
    g = x.reshape(len(x), -1, sub)
    best, best_err = None, None
    for divisor in (high - 1, high - 0.5, high, high + 0.5, high + 1):  # the scale that fits best
        s = np.abs(g).max(-1) / divisor
        err = ((np.clip(np.rint(g / _safe(s)[..., None]), low, high) * s[..., None] - g) ** 2).sum(-1)
        best = s if best is None else np.where(err < best_err, s, best)
        best_err = err if best_err is None else np.minimum(err, best_err)
    assert best is not None
    s = best
    d = (s.max(-1, keepdims=True) / scale_max).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(s / _safe(d)), 0, scale_max).astype(np.int16)
    q = np.clip(np.rint(g / _safe((d * sc)[..., None])), low, high).astype(np.int16) - low
    return q.reshape(len(x), -1).astype(np.uint8), d, sc


def _q2_k(x: np.ndarray) -> np.ndarray:
    q, d, dmin, sc, m = _affine_subblocks(x, 16, 4, 15)
    q = q.reshape(-1, 2, 4, 32)  # weight 128h + 32i + l -> bits 2i of byte 32h + l
    qs = (q << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(2).astype(np.uint8).reshape(-1, 64)
    return np.concatenate([sc | (m << 4), qs, _f16(d), _f16(dmin)], axis=1)


def _q3_k(x: np.ndarray) -> np.ndarray:
    q, d, sc = _symmetric_subblocks(x, 16, -4, 3, 31)
    q = q.reshape(-1, 2, 4, 32)
    shifts = (2 * np.arange(4, dtype=np.uint8))[:, None]
    qs = ((q & 3) << shifts).sum(2).astype(np.uint8).reshape(-1, 64)
    hbits = (q >> 2).reshape(-1, 8, 32)  # bit 4h + i of byte l
    hmask = (hbits << np.arange(8, dtype=np.uint8)[:, None]).sum(1).astype(np.uint8)
    v = (sc + 32).astype(np.uint8)  # 16 six-bit scales
    low = (v[:, :8] & 0xF) | ((v[:, 8:] & 0xF) << 4)
    high = ((v >> 4).reshape(-1, 4, 4) << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(1).astype(np.uint8)
    return np.concatenate([hmask, qs, low, high, _f16(d)], axis=1)


def _k_scale_bytes(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.concatenate([
        (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6),
        (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6),
        (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4),
    ], axis=1).astype(np.uint8)


def _nibble_pairs(q: np.ndarray) -> np.ndarray:
    """(n, chunks * 64) codes -> bytes: low nibble weight 64c + l, high nibble 64c + 32 + l."""
    q = q.reshape(len(q), -1, 2, 32)
    return ((q[:, :, 0] & 0xF) | ((q[:, :, 1] & 0xF) << 4)).reshape(len(q), -1).astype(np.uint8)


def _q4_k(x: np.ndarray) -> np.ndarray:
    q, d, dmin, sc, m = _affine_subblocks(x, 32, 16, 63)
    return np.concatenate([_f16(d), _f16(dmin), _k_scale_bytes(sc, m), _nibble_pairs(q)], axis=1)


def _q5_k(x: np.ndarray) -> np.ndarray:
    q, d, dmin, sc, m = _affine_subblocks(x, 32, 32, 63)
    high = (q >> 4).reshape(-1, 8, 32)
    qh = (high << np.arange(8, dtype=np.uint8)[:, None]).sum(1).astype(np.uint8)
    return np.concatenate([_f16(d), _f16(dmin), _k_scale_bytes(sc, m), qh, _nibble_pairs(q)], axis=1)


def _q6_k(x: np.ndarray) -> np.ndarray:
    q, d, sc = _symmetric_subblocks(x, 16, -32, 31, 127)
    q = q.reshape(-1, 2, 2, 2, 32)  # (half, nibble, pair, l): quarter 2 * nibble + pair
    ql = ((q[:, :, 0] & 0xF) | ((q[:, :, 1] & 0xF) << 4)).reshape(-1, 128).astype(np.uint8)
    high = (q.reshape(-1, 2, 4, 32) >> 4)
    qh = (high << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(2).astype(np.uint8).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16(d)], axis=1)


def _nearest_level(x: np.ndarray) -> np.ndarray:
    return np.abs(x[..., None] - IQ4_LEVELS).argmin(-1).astype(np.uint8)


def _extreme(g: np.ndarray) -> np.ndarray:
    """The signed value of largest magnitude per row of the last axis."""
    return np.take_along_axis(g, np.abs(g).argmax(-1)[..., None], -1)[..., 0]


def _best_level_scale(g: np.ndarray) -> np.ndarray:
    """Per row of the last axis, the scale (near extreme / -127) whose nearest levels fit best."""
    base = _extreme(g) / -127
    best, best_err = base, None
    for f in (0.85, 0.9, 0.95, 1.0, 1.05):
        s = base * f
        err = ((IQ4_LEVELS[_nearest_level(g / _safe(s)[..., None])] * s[..., None] - g) ** 2).sum(-1)
        best = s if best_err is None else np.where(err < best_err, s, best)
        best_err = err if best_err is None else np.minimum(err, best_err)
    return best


def _iq4_nl(x: np.ndarray) -> np.ndarray:
    d = _best_level_scale(x).astype(np.float16).astype(np.float32)
    q = _nearest_level(x / _safe(d)[:, None])
    return np.concatenate([_f16(d), q[:, :16] | (q[:, 16:] << 4)], axis=1)


def _iq4_xs(x: np.ndarray) -> np.ndarray:
    g = x.reshape(len(x), 8, 32)
    s = _best_level_scale(g)
    d = (np.abs(s).max(-1, keepdims=True) / 32).astype(np.float16).astype(np.float32)
    ls = (np.clip(np.rint(s / _safe(d)), -32, 31) + 32).astype(np.uint8)
    q = _nearest_level(g / _safe(d * (ls.astype(np.float32) - 32))[..., None])
    qs = (q[..., :16] | (q[..., 16:] << 4)).reshape(len(x), 128)
    low = (ls[:, 0::2] & 0xF) | ((ls[:, 1::2] & 0xF) << 4)
    high = ((ls >> 4).astype(np.uint16) << (2 * np.arange(8, dtype=np.uint16))).sum(1).astype("<u2")
    return np.concatenate([_f16(d), high.reshape(-1, 1).view(np.uint8), low, qs], axis=1)


_ENCODERS = {"Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
             "IQ4_NL": _iq4_nl, "IQ4_XS": _iq4_xs}
