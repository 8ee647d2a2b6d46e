"""A tiny random-weight llama for fast tests and overhead benchmarks.

Same tokenizer and chat template as the default model (so prompts, special
tokens and streaming detokenization behave exactly as in production) but two
layers of width 64: it decodes ~170 tok/s on the 2-core CPU where the real
model does ~7, so tests measure kmlx, not the model. Weights come from a fixed
seed, so every build is bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from .cache import atomic_dir, file_lock, models_dir
from .errors import ModelLoadError
from .progress import step

TINY_MODEL_NAME = "kmlx-tiny-llama"
TINY_VERSION = 1  # bump when the architecture or weights below change
SEED = 20240601
TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_MARKER = "kmlx-source.json"


def build_tiny_model(dest: Path | None = None) -> Path:
    """Build (or reuse) the tiny model in `dest` (default: the kmlx cache); return it."""
    from .default import ensure_default_model

    dest = Path(dest) if dest is not None else models_dir() / TINY_MODEL_NAME
    if _is_current(dest):
        return dest
    with file_lock("tiny-" + hashlib.sha1(str(dest.resolve()).encode()).hexdigest()[:12]):
        if _is_current(dest):
            return dest
        donor = ensure_default_model()
        base = json.loads((donor / "config.json").read_text())
        with step(f"building the tiny model in {dest}"):
            _clear_stale(dest)
            with atomic_dir(dest) as tmp:
                config = _config(base)
                for name in _TOKENIZER_FILES:
                    shutil.copyfile(donor / name, tmp / name)
                _save(tmp, _weights(config))
                (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
                (tmp / "generation_config.json").write_text(json.dumps(
                    {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}) + "\n")
                (tmp / _MARKER).write_text(json.dumps(
                    {"tiny_version": TINY_VERSION, "seed": SEED, "tokenizer_from": donor.name}) + "\n")
    return dest


def _config(base: dict[str, Any]) -> dict[str, Any]:
    keep = ("vocab_size", "rms_norm_eps", "rope_theta", "max_position_embeddings",
            "bos_token_id", "eos_token_id")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **TINY_SHAPE,
        **{k: base[k] for k in keep if k in base},
        "rope_traditional": False,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
    }


def _weights(config: dict[str, Any]) -> dict[str, Any]:
    # numpy's PCG64 stream is stable across versions and platforms; MLX's RNG
    # makes no such promise.
    import numpy as np

    rng = np.random.default_rng(SEED)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config["head_dim"]
    q_out = config["num_attention_heads"] * head_dim
    kv_out = config["num_key_value_heads"] * head_dim
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (q_out, hidden),
            p + "self_attn.k_proj.weight": (kv_out, hidden),
            p + "self_attn.v_proj.weight": (kv_out, hidden),
            p + "self_attn.o_proj.weight": (hidden, q_out),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        }
    weights = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in shapes.items()}
    for i in range(config["num_hidden_layers"]):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            weights[f"model.layers.{i}.{norm}.weight"] = np.ones(hidden, np.float32)
    weights["model.norm.weight"] = np.ones(hidden, np.float32)
    return weights


def _save(folder: Path, weights: dict[str, Any]) -> None:
    import mlx.core as mx

    mx.save_safetensors(str(folder / "model.safetensors"),
                        {k: mx.array(v) for k, v in sorted(weights.items())},
                        metadata={"format": "mlx"})


def _is_current(folder: Path) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("tiny_version") == TINY_VERSION and (folder / "model.safetensors").is_file()


def _clear_stale(folder: Path) -> None:
    """Remove an older tiny build; never a folder that is not ours."""
    if not folder.exists():
        return
    if folder.is_dir() and ((folder / _MARKER).is_file() or not any(folder.iterdir())):
        shutil.rmtree(folder)
        return
    raise ModelLoadError(f"{folder} exists and is not a kmlx tiny model; choose another folder")
