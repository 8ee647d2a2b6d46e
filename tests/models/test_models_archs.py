"""Each GGUF architecture, converted and run by its mlx-lm model class, computes
what llama.cpp's semantics compute: the float64 NumPy forward passes in
tests/models/archs/ on small synthesized files mixing every tensor type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tests.models.archs import ARCHS, reference_logits, write_model
from tests.models.gguf_reference import read_gguf

IDS = [17, 300, 1000, 1500, 42, 7, 999, 2000, 1234, 1800, 64, 512]  # 12 positions: past gemma3's window of 4
BOUND = 1e-3


def mlx_logits(model, ids: list[int]) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array([ids]))[0].astype(mx.float32), dtype=np.float64)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("cache")
        mp.setenv("KMLX_CACHE_DIR", str(folder))
        yield folder


def converted(cache_dir: Path, tmp_path: Path, arch: str, meta: dict, **options) -> tuple:
    """(loaded float32 model, metadata, float64 tensors, config.json) of a synthesized file."""
    from worker.models import load_model

    path = write_model(tmp_path / f"{arch}.gguf", arch, meta, **options)
    loaded = load_model(str(path), weights="float32")
    meta_read, weights, _ = read_gguf(path)
    return loaded, meta_read, weights, json.loads((loaded.path / "config.json").read_text())


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_llama_cpp_semantics(arch, cache_dir, tmp_path, small_tokenizer_meta):
    loaded, meta, weights, config = converted(cache_dir, tmp_path, arch, small_tokenizer_meta)
    assert loaded.weights == "float32"
    assert type(loaded.model).__module__ == f"mlx_lm.models.{config['model_type']}"  # mlx-lm's own class
    expected = reference_logits(meta, weights, IDS)
    got = mlx_logits(loaded.model, IDS)
    assert got.shape == expected.shape == (len(IDS), len(small_tokenizer_meta["tokenizer.ggml.tokens"]))
    assert np.abs(got - expected).max() <= BOUND


def test_gemma2_soft_capping_and_window(cache_dir, tmp_path, small_tokenizer_meta):
    loaded, meta, weights, config = converted(cache_dir, tmp_path, "gemma2", small_tokenizer_meta)
    assert (config["attn_logit_softcapping"], config["final_logit_softcapping"]) == (0.5, 3.0)
    assert config["max_position_embeddings"] == 4096 == loaded.context_length  # mlx-lm's gemma2 has no window
    uncapped = reference_logits(meta, weights, IDS, caps=False)
    assert np.abs(mlx_logits(loaded.model, IDS) - uncapped).max() > 10 * BOUND  # the caps are what made it match


def test_gemma3_windows_and_rope_bases(cache_dir, tmp_path, small_tokenizer_meta):
    loaded, meta, weights, config = converted(cache_dir, tmp_path, "gemma3", small_tokenizer_meta)
    assert (config["sliding_window"], config["sliding_window_pattern"]) == (4, 2)
    assert config["rope_local_base_freq"] == 10000.0 and config["rope_theta"] == 1e6
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    unwindowed = reference_logits(meta, weights, IDS, windows=False)
    assert np.abs(mlx_logits(loaded.model, IDS) - unwindowed).max() > 10 * BOUND


def test_phi3_longrope(cache_dir, tmp_path, small_tokenizer_meta):
    loaded, meta, weights, config = converted(cache_dir, tmp_path, "phi3", small_tokenizer_meta, longrope=True)
    assert config["rope_scaling"]["type"] == "longrope" and config["partial_rotary_factor"] == 0.75
    assert config["original_max_position_embeddings"] == 4096 and loaded.context_length == 131072
    ids = IDS * 6  # 72 positions: long factors change the low frequencies
    assert np.abs(mlx_logits(loaded.model, ids) - reference_logits(meta, weights, ids)).max() <= BOUND
    plain = {k: v for k, v in weights.items() if not k.startswith("rope_factors")}
    assert np.abs(mlx_logits(loaded.model, ids) - reference_logits(meta, plain, ids)).max() > 10 * BOUND


def test_tied_and_untied_outputs(cache_dir, tmp_path, small_tokenizer_meta):
    for tied in (True, False):
        (tmp_path / str(tied)).mkdir()
        loaded, meta, weights, config = converted(cache_dir, tmp_path / str(tied), "qwen2", small_tokenizer_meta,
                                                  tied=tied)
        assert config["tie_word_embeddings"] is tied
        assert np.abs(mlx_logits(loaded.model, IDS) - reference_logits(meta, weights, IDS)).max() <= BOUND


def test_gemma3_sliding_pattern_default(tmp_path, small_tokenizer_meta):
    """Without the key, llama.cpp's fixed pattern (every 6th layer global) applies."""
    from worker.models.gguf_archs import gemma3
    from worker.models.gguf_file import read_gguf as header

    path = write_model(tmp_path / "g.gguf", "gemma3", small_tokenizer_meta, types=(Q.F16,))
    info = header(path)
    info.meta.pop("gemma3.attention.sliding_window_pattern")
    assert gemma3.config(info)["sliding_window_pattern"] == 6
    info.meta["gemma3.attention.sliding_window_pattern"] = [True, True, False, True, True, False]
    info.meta["gemma3.block_count"] = 6
    assert gemma3.config(info)["sliding_window_pattern"] == 3


@pytest.mark.parametrize("arch", ARCHS)
def test_mlx_quantized_form(arch, cache_dir, tmp_path, small_tokenizer_meta):
    """What Metal/CUDA run (here on the CPU): exactly-mapped types only, so the
    difference is the scales' rounding (bfloat16 for Gemma, float16 otherwise)."""
    import mlx.core as mx
    import mlx.nn as nn

    from worker.models import load_model

    path = write_model(tmp_path / f"{arch}.gguf", arch, small_tokenizer_meta, types=(Q.Q4_K, Q.Q8_0, Q.Q5_K, Q.Q4_0))
    loaded = load_model(str(path), weights="native")
    meta, weights, _ = read_gguf(path)
    scales = {m.scales.dtype for _, m in loaded.model.named_modules() if isinstance(m, nn.QuantizedLinear)}
    assert scales == {mx.bfloat16 if arch.startswith("gemma") else mx.float16}
    got, expected = mlx_logits(loaded.model, IDS), reference_logits(meta, weights, IDS)
    assert np.sqrt(np.mean((got - expected) ** 2) / np.mean(expected**2)) < 0.05


def test_mistral_head_size_of_its_own(cache_dir, tmp_path, small_tokenizer_meta):
    """Mistral Nemo/Small GGUFs are `llama` files whose head size is not width/heads."""
    loaded, meta, weights, config = converted(cache_dir, tmp_path, "mistral", small_tokenizer_meta)
    assert config["model_type"] == "llama" and meta["general.architecture"] == "llama"
    assert config["head_dim"] == 128 != config["hidden_size"] // config["num_attention_heads"]
    assert (config["num_key_value_heads"], config["rope_theta"], config["tie_word_embeddings"]) == (1, 1e6, False)
    assert np.abs(mlx_logits(loaded.model, IDS) - reference_logits(meta, weights, IDS)).max() <= BOUND
