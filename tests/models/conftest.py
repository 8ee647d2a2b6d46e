"""Fixtures for the model tests: the real default GGUF and an independent read of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from worker.models.default import ensure_default_gguf

    return ensure_default_gguf()


@pytest.fixture(scope="session")
def gguf_reference(default_gguf: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(metadata, float64 tensors, tensor types) read with the `gguf` package."""
    from tests.models.gguf_reference import read_gguf

    return read_gguf(default_gguf)


@pytest.fixture(scope="session")
def tokenizer_meta(default_gguf: Path) -> dict[str, Any]:
    """The default model's tokenizer metadata, for synthetic GGUFs."""
    from worker.models.gguf_file import read_gguf

    meta = read_gguf(default_gguf).meta
    return {k: v for k, v in meta.items() if k.startswith("tokenizer.")}


@pytest.fixture(scope="session")
def small_tokenizer_meta(tokenizer_meta: dict[str, Any]) -> dict[str, Any]:
    """The default model's byte-level BPE cut to its first 2048 tokens (and the
    merges that stay inside them): the synthetic architectures stay small."""
    n = 2048
    tokens = tokenizer_meta["tokenizer.ggml.tokens"][:n]
    kept = set(tokens)
    merges = [m for m in tokenizer_meta["tokenizer.ggml.merges"]
              if "".join(m.split(" ", 1)) in kept and all(p in kept for p in m.split(" ", 1))]
    return {**tokenizer_meta, "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.token_type": tokenizer_meta["tokenizer.ggml.token_type"][:n]}
