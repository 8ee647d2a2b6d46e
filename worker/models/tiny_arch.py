"""Tiny random-weight models of architectures whose KV cache cannot be cut:
a Qwen3-Next-style hybrid (gated-delta linear attention beside full
attention: ``ArraysCache`` + ``KVCache``) and a Gemma-3 with sliding-window
layers (``RotatingKVCache`` + ``KVCache``).

Built offline from mlx-lm's own model classes, with the tiny llama's
tokenizer and chat template (tiny.py), for tests and benchmarks of the
prompt cache's checkpoints. Weights come from numpy's fixed-seed stream, so
every build is bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from .cache import atomic_dir, file_lock, models_dir
from .errors import ModelLoadError

TINY_ARCH_VERSION = 1  # bump when a configuration below changes
SEED = 20241130
_MARKER = "kmlx-source.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

ARCHITECTURES: dict[str, dict[str, Any]] = {
    # Layers alternate gated-delta (linear attention: SSM-like state) and full attention.
    "qwen3_next": {
        "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next",
        "hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "linear_num_value_heads": 4, "linear_num_key_heads": 2,
        "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4,
        "num_experts": 0, "num_experts_per_tok": 0, "decoder_sparse_step": 1, "shared_expert_intermediate_size": 0,
        "mlp_only_layers": [0, 1, 2, 3], "moe_intermediate_size": 0, "partial_rotary_factor": 0.25,
        "full_attention_interval": 2, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    },
    # Every other layer a 32-token sliding window.
    "gemma3_text": {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 32,
        "sliding_window_pattern": 2, "rope_theta": 10000.0, "rope_local_base_freq": 10000.0, "rms_norm_eps": 1e-6,
    },
}


def build_tiny_arch(model_type: str, dest: Path | None = None) -> Path:
    """Build (or reuse) the tiny model of ``model_type``; return its folder."""
    if model_type not in ARCHITECTURES:
        raise ValueError(f"no tiny model for {model_type!r}; choose one of {sorted(ARCHITECTURES)}")
    from .default import ensure_default_model

    dest = Path(dest) if dest is not None else models_dir() / f"kmlx-tiny-{model_type.replace('_', '-')}"
    if _is_current(dest, model_type):
        return dest
    with file_lock("tiny-arch-" + hashlib.sha1(str(dest.resolve()).encode()).hexdigest()[:12]):
        if _is_current(dest, model_type):
            return dest
        donor = ensure_default_model()
        base = json.loads((donor / "config.json").read_text())
        config = {
            **ARCHITECTURES[model_type],
            **{k: base[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "max_position_embeddings") if k in base},
        }
        if dest.exists():
            if not (dest / _MARKER).is_file():
                raise ModelLoadError(f"{dest} exists and is not a kmlx tiny model; choose another folder")
            shutil.rmtree(dest)
        with atomic_dir(dest) as tmp:
            for name in _TOKENIZER_FILES:
                shutil.copyfile(donor / name, tmp / name)
            _save_weights(tmp, config)
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            (tmp / "generation_config.json").write_text(json.dumps(
                {"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id")}) + "\n")
            (tmp / _MARKER).write_text(json.dumps({"tiny_arch": model_type, "version": TINY_ARCH_VERSION, "seed": SEED}) + "\n")
    return dest


def _save_weights(folder: Path, config: dict[str, Any]) -> None:
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    rng = np.random.default_rng(SEED)
    weights = {}
    params: list[tuple[str, mx.array]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    for name, p in sorted(params, key=lambda item: item[0]):
        if name.endswith("norm.weight") or p.ndim == 1:
            value = np.asarray(p, dtype=np.float32)  # norms, biases, decay constants: the class's own init
        else:
            value = (rng.standard_normal(p.shape) * 0.02).astype(np.float32)
        weights[name] = mx.array(value)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})


def _is_current(folder: Path, model_type: str) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("tiny_arch") == model_type and marker.get("version") == TINY_ARCH_VERSION
