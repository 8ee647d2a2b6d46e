"""Converted weights compute what the GGUF's own numbers compute (float64 NumPy reference)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tests.models.gguf_reference import ReferenceBPE, read_gguf, reference_logits
from tests.models.gguf_synth import llama_cpp_permute, write_llama

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "<|im_start|>user\n¿Qué tal? 12 + 30 =<|im_end|>"]


def mlx_logits(model, ids: list[int]) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array([ids]))[0].astype(mx.float32), dtype=np.float64)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_default_model_logits_match_numpy_float64(default_loaded, gguf_reference, prompt):
    meta, weights, types = gguf_reference
    assert {"Q4_1", "Q8_0"} <= set(types.values())  # the quantized paths are exercised
    ids = ReferenceBPE(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"],
                       meta["tokenizer.ggml.token_type"]).encode(prompt)
    expected = reference_logits(meta, weights, ids)
    got = mlx_logits(default_loaded.model, ids)
    assert default_loaded.weights == "float32"
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-3


def test_quantized_in_memory_agrees(gguf_reference):
    """weights='native' keeps Q4/Q8 (the Metal/CUDA choice); same numbers, fp16 scales."""
    from worker.models import load_model

    meta, weights, _ = gguf_reference
    loaded = load_model("default", weights="native")
    assert loaded.weights == "q4+q8"
    ids = loaded.tokenizer.encode("The capital of France is", add_special_tokens=False)
    got, expected = mlx_logits(loaded.model, ids), reference_logits(meta, weights, ids)
    assert np.abs(got - expected).max() < 0.5  # float16 activations, not a layout error
    assert got[-1].argmax() == expected[-1].argmax()


def test_unpermute_inverts_llama_cpp_permute():
    import mlx.core as mx

    from worker.models.gguf_tensors import unpermute_rows

    rng = np.random.default_rng(0)
    for n_head, shape, dtype in [(9, (576, 72), np.uint32), (3, (192, 18), np.float16), (4, (64,), np.float32)]:
        x = (rng.integers(0, 2**31, shape) if dtype == np.uint32 else rng.standard_normal(shape)).astype(dtype)
        back = np.array(unpermute_rows(mx.array(llama_cpp_permute(x, n_head)), n_head))
        assert np.array_equal(back, x)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, tokenizer_meta) -> Path:
    types = (Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.F16, Q.BF16, Q.F32)
    return write_llama(tmp_path_factory.mktemp("gguf") / "synthetic-llama.gguf", tokenizer_meta, types=types)


@pytest.mark.e2e  # starts a child process
def test_all_tensor_types_bias_and_untied_output(synthetic, tmp_path):
    """F32, F16, BF16, Q4_0, Q4_1 and Q8_0 matrices, permuted q/k biases and a separate output head,
    converted through the CLI and loaded as a folder, against the float64 reference."""
    from worker.models import load_model

    out = tmp_path / "converted"
    run = subprocess.run([sys.executable, "-m", "worker.models", "convert", str(synthetic), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    meta, weights, types = read_gguf(synthetic)
    assert set(types.values()) == {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"}
    loaded = load_model(str(out))
    assert loaded.model_id == "converted" and loaded.context_length == 2048
    ids = loaded.tokenizer.encode("Synthetic weights, 42 tokens?", add_special_tokens=False)
    diff = np.abs(mlx_logits(loaded.model, ids) - reference_logits(meta, weights, ids)).max()
    assert diff <= 1e-3


def hf_llama3_divisors(head_dim: int, base: float, factor=8.0, low=1.0, high=4.0, original=8192) -> np.ndarray:
    """transformers' Llama-3 inv_freq rule, element by element, as divisors of the plain frequencies."""
    out = []
    for i in range(0, head_dim, 2):
        inv = base ** (-i / head_dim)
        wavelen = 2 * np.pi / inv
        if wavelen < original / high:
            new = inv
        elif wavelen > original / low:
            new = inv / factor
        else:
            smooth = (original / wavelen - low) / (high - low)
            new = (1 - smooth) * inv / factor + smooth * inv
        out.append(inv / new)
    return np.array(out)


def test_llama3_rope_scaling_from_rope_freqs(tmp_path, monkeypatch, tokenizer_meta):
    from worker.models import ModelLoadError, load_model

    monkeypatch.setenv("KMLX_CACHE_DIR", str(tmp_path / "cache"))
    divisors = hf_llama3_divisors(16, 10000.0)
    assert len(set(np.round(divisors, 6))) == 3  # all three regimes: 1, smoothed, the factor
    gguf = write_llama(tmp_path / "llama31ish.gguf", tokenizer_meta, types=(Q.Q8_0, Q.F16), rope_freqs=divisors)
    loaded = load_model(str(gguf))
    config = json.loads((loaded.path / "config.json").read_text())
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    meta, weights, _ = read_gguf(gguf)
    ids = list(range(1000, 1400, 5))  # 80 positions: the scaled low frequencies matter
    got = mlx_logits(loaded.model, ids)
    assert np.abs(got - reference_logits(meta, weights, ids)).max() <= 1e-3
    unscaled = {k: v for k, v in weights.items() if k != "rope_freqs.weight"}
    assert np.abs(got - reference_logits(meta, unscaled, ids)).max() > 1e-3  # the check can fail

    odd = write_llama(tmp_path / "odd.gguf", tokenizer_meta, types=(Q.F16,), rope_freqs=np.linspace(1, 3, 8))
    with pytest.raises(ModelLoadError, match="not a Llama-3 scaling"):
        load_model(str(odd))
