"""The models a `--models-dir` worker can serve: what is in the folder.

Served ids are names on disk, as `-m` names them: an MLX model folder's name,
a `.gguf` file's name without the extension. The folder may be flat
(`DIR/Qwen2.5-7B-Instruct-4bit/`, `DIR/phi-4.Q4_K_M.gguf`) or nested the way
LM Studio and Hugging Face downloads are (`DIR/publisher/repo/...`), up to
three levels. A request's model id is only ever looked up here, never turned
into a path.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kmlx.worker.catalog")

_MAX_DEPTH = 3
# Files in a model folder that are not models of their own.
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")  # split GGUFs: not supported as such
_PROJECTOR = re.compile(r"(^|[-_.])mmproj([-_.]|$)", re.IGNORECASE)  # vision projectors of llama.cpp


@dataclass(frozen=True)
class CatalogEntry:
    model_id: str
    path: Path  # an MLX model folder or a .gguf file
    size_bytes: int  # weights on disk: an estimate of the memory the model needs


def scan(root: Path) -> dict[str, CatalogEntry]:
    """Every servable model under `root`, by id (sorted by path; a duplicate id keeps the first)."""
    found: dict[str, CatalogEntry] = {}
    for entry in _walk(root, 0):
        if entry.model_id in found:
            log.warning("models dir: %s has the same id as %s; skipped", entry.path, found[entry.model_id].path)
            continue
        found[entry.model_id] = entry
    return found


def _walk(folder: Path, depth: int) -> list[CatalogEntry]:
    try:
        children = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        log.warning("models dir: cannot list %s: %s", folder, exc.strerror or exc)
        return []
    out: list[CatalogEntry] = []
    for child in children:
        if child.is_dir():
            if _is_mlx_folder(child):
                out.append(CatalogEntry(child.name, child, _size(child.glob("*.safetensors"))))
            elif depth + 1 < _MAX_DEPTH:
                out.extend(_walk(child, depth + 1))
        elif child.suffix.lower() == ".gguf" and child.is_file():
            stem = child.name[: -len(".gguf")]
            if _PROJECTOR.search(stem) or _SHARD.search(stem):
                continue
            out.append(CatalogEntry(stem, child, _size([child])))
    return out


def _is_mlx_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _size(files: object) -> int:
    total = 0
    for f in files:  # type: ignore[attr-defined]
        try:
            total += f.stat().st_size
        except OSError:
            pass
    return total
