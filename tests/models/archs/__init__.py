"""Per-architecture test references: each module writes a small GGUF of its
architecture as llama.cpp's converter would (`write`) and computes its logits
in float64 NumPy with llama.cpp's semantics (`forward`). No kmlx code."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .common import numpy_blas_single_thread

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


def module(arch: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{arch}")


def write_model(path: Path, arch: str, tokenizer_meta: dict[str, Any], **options: Any) -> Path:
    return module(arch).write(path, tokenizer_meta, **options)


def reference_logits(meta: dict[str, Any], weights: dict[str, np.ndarray], ids: list[int], **options: Any) -> np.ndarray:
    """float64 logits (len(ids), vocab) computed from the GGUF's raw tensors."""
    with numpy_blas_single_thread():
        return module(meta["general.architecture"]).forward(meta, weights, ids, **options)
