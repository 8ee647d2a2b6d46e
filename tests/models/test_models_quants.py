"""GGML block decoding against llama.cpp's own Python reader (gguf-py), block by
block on random bytes, and the MLX affine forms built from the decoded blocks."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tests.models.archs.common import random_blocks
from worker.models.gguf_affine import EXACT, REQUANTIZE, pack_codes, to_affine
from worker.models.gguf_quants import (
    QUANT_TYPES,
    SUPPORTED_TYPES,
    decode,
    dequantize,
    dequantize_raw,
)

TYPES = sorted(QUANT_TYPES.values(), key=lambda t: t.id)


def test_block_sizes_are_ggmls():
    for t in SUPPORTED_TYPES.values():
        assert gguf.GGML_QUANT_SIZES[Q(t.id)] == (t.block, t.nbytes), t.name


@pytest.mark.parametrize("kind", TYPES, ids=lambda t: t.name)
def test_random_blocks_decode_exactly_as_gguf_py(kind):
    """Every byte pattern is a valid block: 4000 random ones, NaN and inf scales included."""
    raw = np.random.default_rng(kind.id).integers(0, 256, (4000, kind.nbytes), dtype=np.uint8)
    with np.errstate(all="ignore"):
        expected = gguf.quants.dequantize(raw, Q(kind.id)).reshape(-1)
    got = dequantize(decode(raw, kind.id))
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got, expected, equal_nan=True)
    assert np.isfinite(expected).mean() > 0.5  # the comparison covered real numbers too


@pytest.mark.parametrize("kind", TYPES, ids=lambda t: t.name)
def test_matrix_rows_keep_their_order(kind):
    rows, cols = 6, 2 * 256
    raw = random_blocks(np.random.default_rng(1), Q(kind.id), rows, cols)
    expected = gguf.quants.dequantize(raw, Q(kind.id))
    assert expected.shape == (rows, cols)
    assert np.array_equal(dequantize_raw(raw, kind.id).reshape(rows, cols), expected)


def test_float_types():
    values = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    assert np.array_equal(dequantize_raw(values.view(np.uint8), 0).reshape(3, 32), values)
    half = values.astype(np.float16)
    assert np.array_equal(dequantize_raw(half.view(np.uint8), 1).reshape(3, 32), half.astype(np.float32))
    bf16 = gguf.quants.quantize(values, Q.BF16)
    assert np.array_equal(dequantize_raw(bf16.view(np.uint8), 30), gguf.quants.dequantize(bf16, Q.BF16).reshape(-1))


def test_every_quantized_type_has_an_mlx_form():
    assert set(EXACT) | set(REQUANTIZE) == {t.name for t in QUANT_TYPES.values()}
    assert not set(EXACT) & set(REQUANTIZE)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_packed_codes_are_mlxs_layout(bits):
    import mlx.core as mx

    codes = np.random.default_rng(bits).integers(0, 2**bits, (5, 256)).astype(np.uint8)
    back = mx.dequantize(mx.array(pack_codes(codes, bits)), mx.ones((5, 8)), mx.zeros((5, 8)), group_size=32, bits=bits)
    assert np.array_equal(np.array(back), codes.astype(np.float32))


@pytest.mark.parametrize("kind", TYPES, ids=lambda t: t.name)
def test_affine_form(kind):
    """Exact types come back bit for bit (float32 scales); requantized ones stay close."""
    import mlx.core as mx

    rows, cols = 8, 512
    blocks = decode(random_blocks(np.random.default_rng(2), Q(kind.id), rows, cols), kind.id)
    expected = dequantize(blocks).reshape(rows, cols)
    q = to_affine(blocks, (rows, cols), kind.name, mx.float32)
    got = np.array(mx.dequantize(q.weight, q.scales, q.biases, group_size=q.group_size, bits=q.bits))
    assert q.exact == (kind.name in EXACT)
    if q.exact:
        assert np.array_equal(got, expected)
    else:
        assert (q.bits, q.group_size) == REQUANTIZE[kind.name]
        error = np.sqrt(np.mean((got - expected) ** 2)) / np.sqrt(np.mean(expected**2))
        assert 0 < error < 0.15, error
