"""Every GGUF tensor type through the whole path (convert, load, run), on a
small llama whose matrices, embedding and output head all have that type:
float32 (the CPU form) is llama.cpp's numbers; the MLX-quantized form
(Metal/CUDA, run here on the CPU) stays within its mapping's error."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tests.models.archs import reference_logits, write_model
from tests.models.gguf_reference import read_gguf
from worker.models.gguf_affine import EXACT, REQUANTIZE

IDS = [17, 300, 1000, 1500, 42, 7, 999, 2000]
TYPES = sorted(set(EXACT) | set(REQUANTIZE))


def logits(model, ids: list[int]) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array([ids]))[0].astype(mx.float32), dtype=np.float64)


def relative_rms(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.sqrt(np.mean((got - expected) ** 2) / np.mean(expected**2)))


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
    error = relative_rms(logits(native.model, IDS), expected)
    print(f"[models] {kind} as MLX q{bits}: logit error {error:.4f} (relative RMS)")
    assert error < (0.02 if kind in EXACT else 0.3)
