"""Sampling defaults: request, then generation_config.json, then published
values, then worker flags, then OpenAI's."""

from __future__ import annotations

import json
from pathlib import Path

from protocol.messages import SamplingParams
from worker.generation_config import build_defaults, read_model_defaults
from worker.models.default import GGUF_SHA256, PUBLISHED_SAMPLING, published_sampling


def _model(tmp_path: Path, config: dict | str) -> Path:
    (tmp_path / "generation_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return tmp_path


def test_model_keys_are_read_and_typed(tmp_path):
    d = _model(tmp_path, {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "do_sample": True, "max_new_tokens": 512,
                          "eos_token_id": [1, 2], "repetition_penalty": True})
    assert read_model_defaults(d) == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 512}


def test_missing_or_broken_config_gives_nothing(tmp_path):
    assert read_model_defaults(tmp_path) == {}
    assert read_model_defaults(_model(tmp_path, "{not json")) == {}
    assert read_model_defaults(_model(tmp_path, "[1]")) == {}


def test_layers_in_order(tmp_path):
    d = _model(tmp_path, {"temperature": 0.6})
    defaults = build_defaults(d, published={"temperature": 0.2, "top_p": 0.9}, flags={"top_p": 0.5, "top_k": 7, "min_p": None})
    s = defaults.resolve(SamplingParams())
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (0.6, 0.9, 7, 0.0)
    assert defaults.sources["temperature"] == "generation_config.json"
    assert defaults.sources["top_p"].startswith("published")
    # what the request sets always wins, including explicit zeros
    s = defaults.resolve(SamplingParams(temperature=0.0, top_k=0, presence_penalty=1.5))
    assert (s.temperature, s.top_k, s.presence_penalty) == (0.0, 0, 1.5)


def test_generation_config_none_skips_the_model(tmp_path):
    d = _model(tmp_path, {"temperature": 0.6})
    s = build_defaults(d, use_model=False, flags={"temperature": 0.3}).resolve(SamplingParams())
    assert s.temperature == 0.3


def test_openai_defaults_when_nothing_says_otherwise():
    s = build_defaults(None).resolve(SamplingParams(logit_bias={5: 1.0}, top_logprobs=3, seed=9))
    assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.presence_penalty) == (1.0, 1.0, 0, 1.0, 0.0)
    assert s.max_tokens is None and s.logit_bias == {5: 1.0} and s.seed == 9
    assert s.logprobs and s.top_logprobs == 3  # top_logprobs implies logprobs


def test_published_values_only_for_the_default_model(tmp_path):
    (tmp_path / "kmlx-source.json").write_text(json.dumps({"sha256": GGUF_SHA256}))
    assert published_sampling(tmp_path) == PUBLISHED_SAMPLING == {"temperature": 0.2, "top_p": 0.9}
    (tmp_path / "kmlx-source.json").write_text(json.dumps({"sha256": "0" * 64}))
    assert published_sampling(tmp_path) == {}
    assert published_sampling(tmp_path / "missing") == {}
