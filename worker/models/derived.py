"""A cache of dequantized weights: a CPU start reads float32, it does not recompute it.

Dequantizing SmolLM2's Q4 weights to float32 takes ~1.1 s on 2 cores; reading
the same float32 weights back from a safetensors file takes ~0.2 s (MLX maps
the file). So the first float load of a quantized model writes what it
computed under the kmlx cache, keyed by the source folder's identity, and
later loads use it. Skipped above a size limit, since float32 is ~7x a Q4
model: KMLX_DERIVED_MAX_GB (default 4; 0 turns the cache off).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .cache import atomic_dir, kmlx_cache_dir
from .progress import say

DERIVED_VERSION = 1
_MARKER = "kmlx-derived.json"
_DEFAULT_MAX_GB = 4.0


def derived_dir(source: Path, dtype: str) -> Path:
    """Where `source`'s weights in `dtype` are cached; changes when any weight file does."""
    parts = [str(source.resolve()), str(DERIVED_VERSION), dtype]
    for f in sorted(source.glob("*.safetensors")) + [source / "config.json"]:
        st = f.stat()  # follows the symlinks of a Hugging Face snapshot
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return kmlx_cache_dir() / "derived" / key / dtype


def load_derived(source: Path, dtype: str) -> Any | None:
    """The model built from cached `dtype` weights (lazy), or None when there are none."""
    try:
        folder = derived_dir(source, dtype)
        if not (folder / _MARKER).is_file():
            return None
        from mlx_lm.utils import load_model

        model, _ = load_model(folder, lazy=True)
        return model
    except Exception:  # a damaged cache entry must never stop a load: recompute instead
        return None


def store_derived(source: Path, dtype: str, model: Any) -> None:
    """Save `model`'s (already converted) weights for the next start; best effort."""
    from mlx.utils import tree_flatten

    from .gguf_convert import save_weights

    weights = dict(tree_flatten(model.parameters()))
    size = sum(v.nbytes for v in weights.values())
    if size > _max_bytes():
        return
    try:
        folder = derived_dir(source, dtype)
        config = json.loads((source / "config.json").read_text())
        for key in ("quantization", "quantization_config"):
            config.pop(key, None)
            if isinstance(config.get("text_config"), dict):
                config["text_config"].pop(key, None)
        say(f"caching {dtype} weights ({size / 2**30:.2f} GiB) for faster starts: {folder}")
        with atomic_dir(folder) as tmp:
            save_weights(tmp, weights)
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            (tmp / _MARKER).write_text(json.dumps({"source": str(source.resolve()), "dtype": dtype,
                                                   "version": DERIVED_VERSION}) + "\n")
    except OSError:
        pass  # read-only or full cache: the next start recomputes, that is all


def _max_bytes() -> float:
    try:
        gb = float(os.environ.get("KMLX_DERIVED_MAX_GB", _DEFAULT_MAX_GB))
    except ValueError:
        gb = _DEFAULT_MAX_GB
    return gb * 2**30
