"""The loaded default model answers for real; the tiny model is deterministic and fast."""

from __future__ import annotations

import hashlib
import json
import time

import pytest


def greedy(loaded, question: str, max_tokens: int = 16) -> str:
    from mlx_lm import generate

    prompt = loaded.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    return generate(loaded.model, loaded.tokenizer, prompt, max_tokens=max_tokens, verbose=False)


def test_capital_of_france_is_paris(default_loaded):
    assert "Paris" in greedy(default_loaded, "What is the capital of France?")


def test_default_model_fields(default_loaded):
    m = default_loaded
    assert m.model_id == "SmolLM2-135M-Instruct"
    assert m.path.name == "SmolLM2-135M-Instruct" and (m.path / "config.json").is_file()
    assert m.context_length == 8192
    assert m.is_vision is False and m.processor is None
    assert m.weights == "float32"  # the CPU backend's choice
    assert "SmolLM2-135M-Instruct" in m.describe()


def test_load_time_from_cache_is_reported(capsys):
    """Not a timing assertion: prints the number the docs quote."""
    from worker.models import load_model

    start = time.perf_counter()
    load_model("default")
    with capsys.disabled():
        print(f"\n[models] default model load from cache: {time.perf_counter() - start:.2f} s")


@pytest.mark.parametrize("weights, expect", [("bfloat16", "bfloat16"), ("q8", "q8")])
def test_weights_override(weights, expect, tiny_model_path):
    from worker.models import load_model

    loaded = load_model(str(tiny_model_path), weights=weights)
    assert loaded.weights == expect
    assert isinstance(greedy(loaded, "Hi", max_tokens=4), str)


def test_tiny_model_matches_default_tokenizer(tiny_model_path, default_loaded):
    from worker.models import load_model

    tiny = load_model(str(tiny_model_path))
    assert tiny.model_id == "kmlx-tiny-llama"
    assert tiny.weights == "float32"
    text = "<|im_start|>user\nSame tokenizer? ✓<|im_end|>"
    assert tiny.tokenizer.encode(text) == default_loaded.tokenizer.encode(text)
    assert tiny.tokenizer.chat_template == default_loaded.tokenizer.chat_template
    config = json.loads((tiny_model_path / "config.json").read_text())
    assert config["num_hidden_layers"] <= 4 and config["hidden_size"] <= 128


def test_tiny_model_is_deterministic_and_fast(tmp_path, tiny_model_path, capsys):
    from mlx_lm import generate

    from worker.models import build_tiny_model, load_model

    again = build_tiny_model(tmp_path / "tiny")
    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(tiny_model_path)
    assert build_tiny_model(tmp_path / "tiny") == again  # cached: same folder, no rebuild

    loaded = load_model(str(again))
    prompt = loaded.tokenizer.encode("Count: one two three")
    start = time.perf_counter()
    generate(loaded.model, loaded.tokenizer, prompt, max_tokens=64, verbose=False)
    with capsys.disabled():
        print(f"\n[models] tiny model: 64 tokens in {time.perf_counter() - start:.2f} s")


def test_vision_flag_loads_through_mlx_vlm(tiny_model_path):
    """The vision hook: -V (vision=True) hands the folder to mlx-vlm, which has a llama too."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    from worker.models import load_model

    loaded = load_model(str(tiny_model_path), vision=True)
    assert loaded.is_vision and loaded.processor is not None
    assert type(loaded.model).__module__.startswith("mlx_vlm.")
    assert isinstance(loaded.tokenizer, TokenizerWrapper)
    assert loaded.tokenizer.encode("Hi <|im_end|>")[-1] == 2


def test_vision_is_detected_from_config():
    from worker.models.loader import context_length, has_vision

    assert has_vision({"model_type": "qwen2_vl", "vision_config": {"depth": 2}})
    assert not has_vision({"model_type": "llama"})
    assert context_length({"text_config": {"max_position_embeddings": 32768}}) == 32768
    assert context_length({}) == 4096
