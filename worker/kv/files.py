"""KV caches on disk: atomic, private, checksummed, and refused when foreign.

A cache file is mlx-lm's prompt-cache safetensors format; beside it a JSON
sidecar records what the file holds (tokens, message boundaries, hashes,
title, time, model, tokenizer hash) and the SHA-256 of the safetensors
bytes. Loading checks the checksum and the model before trusting anything.

Names on disk come from ``safe_name()``, never from a client's string
directly, so no id can point outside the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import load_prompt_cache, save_prompt_cache

from .views import Cache

# Only these cache classes may be instantiated from a file's metadata.
_ALLOWED_CLASSES = {"KVCache", "RotatingKVCache", "ArraysCache", "QuantizedKVCache", "ChunkedKVCache"}


class CacheFileError(Exception):
    """A file that cannot be used; ``status`` is the HTTP status to report."""

    def __init__(self, message: str, status: int = 422, code: str = "cache_file_invalid"):
        super().__init__(message)
        self.status = status
        self.code = code


def safe_name(identifier: str) -> str:
    """A file-name stem for any id: readable part + hash (no collisions,
    no separators, no dots at the start, bounded length)."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", identifier)[:64] or "_"
    digest = hashlib.sha256(identifier.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}-{digest}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokens_hash(tokens: list[int]) -> str:
    """SHA-256 over the token ids written as comma-separated decimals."""
    return hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest()


@dataclass
class SavedCache:
    cache: Cache
    meta: dict[str, Any]


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_cache(directory: Path, stem: str, cache: Cache, meta: dict[str, Any]) -> tuple[Path, int]:
    """Write ``<stem>.safetensors`` + ``<stem>.json`` atomically (0600).

    The safetensors file is written under a temporary name that already ends
    in ``.safetensors`` (MLX appends the suffix otherwise — the seed's bug),
    then renamed; the sidecar goes last, so a crash never leaves a sidecar
    pointing at a half-written file."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = directory / f"{stem}.safetensors"
    tmp = Path(tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".safetensors")[1])
    try:
        os.chmod(tmp, 0o600)
        save_prompt_cache(str(tmp), cache, {"kmlx": "1"})
        size = tmp.stat().st_size
        meta = {**meta, "sha256": sha256_file(tmp), "size_bytes": size, "ts": meta.get("ts", time.time())}
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    _write_private(directory / f"{stem}.json", json.dumps(meta).encode())
    return final, size


def read_meta(directory: Path, stem: str) -> dict[str, Any] | None:
    path = directory / f"{stem}.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheFileError(f"cache metadata {path.name} is unreadable: {exc}") from None
    if not isinstance(meta, dict):
        raise CacheFileError(f"cache metadata {path.name} is not an object")
    return meta


def load_cache(directory: Path, stem: str, *, model_id: str, tokenizer_hash: str) -> SavedCache | None:
    """Load a saved cache, or None if nothing is saved under that name."""
    meta = read_meta(directory, stem)
    if meta is None:
        return None
    path = directory / f"{stem}.safetensors"
    if not path.exists():
        raise CacheFileError(f"cache file for this id is missing ({path.name})")
    if meta.get("model") != model_id or meta.get("tokenizer_hash") != tokenizer_hash:
        raise CacheFileError(
            f"this cache was saved for model {meta.get('model')!r}, not {model_id!r}", status=409, code="cache_model_mismatch"
        )
    if sha256_file(path) != meta.get("sha256"):
        raise CacheFileError("cache file is damaged (checksum mismatch)", code="cache_file_corrupt")
    try:
        _, raw_meta = mx.load(str(path), return_metadata=True)
        classes = {v for k, v in raw_meta.items() if k.startswith("1.")}
        if not classes <= _ALLOWED_CLASSES:
            raise CacheFileError(f"cache file names unknown cache types {sorted(classes - _ALLOWED_CLASSES)}")
        cache = load_prompt_cache(str(path))
    except CacheFileError:
        raise
    except Exception as exc:
        raise CacheFileError(f"cache file is unreadable: {exc}", code="cache_file_corrupt") from None
    return SavedCache(cache, meta)


def delete_cache(directory: Path, stem: str) -> bool:
    found = False
    for suffix in (".json", ".safetensors"):
        p = directory / f"{stem}{suffix}"
        if p.exists():
            p.unlink()
            found = True
    return found


def directory_bytes(directory: Path) -> int:
    if not directory.exists():
        return 0
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def disk_fraction_used(directory: Path) -> float:
    usage = shutil.disk_usage(directory if directory.exists() else directory.parent)
    return usage.used / usage.total if usage.total else 1.0
