"""Every GGUF tensor type through the whole path (convert, load, run), on a
small llama whose matrices, embedding and output head all have that type:
float32 (the CPU form) is llama.cpp's numbers; the MLX-quantized form
(Metal/CUDA, run here on the CPU) is within its mapping's error, layer by
layer (logits of random-weight models amplify small weight errors
erratically, so the logit error of each mapping is measured on a real model
by `python -m bench gguf` instead; here it is checked for the exact types)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tests.models.archs import reference_logits, write_model
from tests.models.gguf_reference import read_gguf
from worker.models.gguf_affine import EXACT, REQUANTIZE

IDS = [17, 300, 1000, 1500, 42, 7, 999, 2000]
TYPES = sorted(set(EXACT) | set(REQUANTIZE))
# Relative RMS weight error of MLX's own quantizer at each width (uniform codes, groups of 32), with room.
REQUANTIZED_BOUND = {5: 0.05, 6: 0.025, 8: 0.007}
EXACT_BOUND = 1e-3  # only the float16 rounding of K-quant scales


def logits(model, ids: list[int]) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array([ids]))[0].astype(mx.float32), dtype=np.float64)


def relative_rms(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.sqrt(np.mean((got - expected) ** 2) / np.mean(expected**2)))


def layer_errors(native, exact) -> dict[str, float]:
    """Each quantized layer of `native`, dequantized, against the float32 model's layer."""
    import mlx.core as mx
    import mlx.nn as nn

    floats = dict(exact.named_modules())
    out = {}
    for name, m in native.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            w = mx.dequantize(m.weight, m.scales.astype(mx.float32), None if m.biases is None else m.biases.astype(mx.float32),
                              group_size=m.group_size, bits=m.bits)
            out[name] = relative_rms(np.array(w), np.array(floats[name].weight))
    return out


@pytest.mark.parametrize("kind", TYPES)
def test_type_end_to_end(kind, tmp_path, monkeypatch, small_tokenizer_meta):
    from worker.models import load_model

    monkeypatch.setenv("KMLX_CACHE_DIR", str(tmp_path / "cache"))
    qtype = Q[kind]
    path = write_model(tmp_path / f"llama-{kind}.gguf", "llama", small_tokenizer_meta, types=(qtype,),
                       embed_type=qtype, output_type=qtype, qkv_bias=False)
    meta, weights, types = read_gguf(path)
    assert {t for n, t in types.items() if n.endswith(".weight") and weights[n].ndim == 2} == {kind}
    expected = reference_logits(meta, weights, IDS)

    cpu = load_model(str(path), weights="float32")
    assert np.abs(logits(cpu.model, IDS) - expected).max() <= 1e-3

    native = load_model(str(path), weights="native")
    bits = EXACT[kind] if kind in EXACT else REQUANTIZE[kind][0]
    assert native.weights == f"q{bits}"
    errors = layer_errors(native.model, cpu.model)
    assert len(errors) == 2 + 7 * 2  # embedding, output, 7 matrices per layer
    worst = max(errors.values())
    print(f"[models] {kind} as MLX q{bits}: weights off by {worst:.4f} at most (relative RMS)")
    if kind in EXACT:
        assert worst <= EXACT_BOUND
        assert relative_rms(logits(native.model, IDS), expected) < 0.02
    else:
        assert 0 < worst <= REQUANTIZED_BOUND[bits]
