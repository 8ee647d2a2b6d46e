"""A random-weight model of a real shape, for speed measurements where no
hub is reachable (the GPU machine; docs/benchmarks.md).

``python -m bench backends --model random-1b`` builds (once, cached) a
llama with Llama-3.2-1B's shape — hidden 2048, 16 layers, 32 heads, 8 KV
heads, head_dim 64, intermediate 8192 — in bfloat16, with the tokenizer and
chat template of the tiny model (SmolLM2's; 49,152 tokens, so 1.07 B
parameters). Random weights generate nonsense at a real model's speed;
EOS is rare, and kmlx and the in-process baseline ignore it anyway.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "random-1b": {
        "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    },
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_VERSION = 1


def build_random_model(name: str, tokenizer_from: Path | None = None, dest: Path | None = None) -> Path:
    """Build (or reuse) the random model ``name`` and return its folder."""
    from worker.models import build_tiny_model, kmlx_cache_dir

    dest = dest or kmlx_cache_dir() / "models" / f"bench-{name}"
    marker = dest / "kmlx-bench.json"
    if marker.is_file() and json.loads(marker.read_text()).get("version") == _VERSION:
        return dest
    source = tokenizer_from or build_tiny_model()
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", **SHAPES[name],
        "vocab_size": _vocab_size(source), "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "max_position_embeddings": 131072, "tie_word_embeddings": True, "rope_traditional": False,
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16",
        **{k: v for k, v in _source_config(source).items() if k in ("bos_token_id", "eos_token_id")},
    }
    print(f"building {name} ({config['num_hidden_layers']} layers, hidden {config['hidden_size']}) in {dest}", flush=True)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_weights(config, tmp)
    for f in _TOKENIZER_FILES:
        shutil.copyfile(source / f, tmp / f)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "kmlx-bench.json").write_text(json.dumps({"version": _VERSION, "shape": name}) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _save_weights(config: dict[str, Any], folder: Path) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    # Embeddings start as N(0, 1): scaled down, so activations stay in bfloat16's range.
    model.model.embed_tokens.weight = model.model.embed_tokens.weight * 0.02
    model.set_dtype(mx.bfloat16)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})


def _source_config(source: Path) -> dict[str, Any]:
    path = source / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _vocab_size(source: Path) -> int:
    from tokenizers import Tokenizer

    return int(_source_config(source).get("vocab_size") or Tokenizer.from_file(str(source / "tokenizer.json")).get_vocab_size())
