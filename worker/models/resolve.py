"""Turn the worker's `-m` value into a local folder mlx-lm / mlx-vlm can load.

Accepted, in this order: nothing or "default" (the built-in SmolLM2), an
existing path (an MLX model folder, a .gguf file, or a folder holding exactly
one .gguf), and a Hugging Face repo id ("owner/name").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .cache import discard_dir, file_lock, models_dir
from .errors import ModelLoadError
from .gguf_file import GGUF_MAGIC
from .hub import hub_snapshot, looks_like_repo_id

_USAGE = "give an MLX model folder, a .gguf file, a Hugging Face repo id (owner/name) or 'default'"


@dataclass
class Resolved:
    path: Path  # local folder with config.json
    model_id: str  # served name


def resolve(spec: str | None) -> Resolved:
    from .default import DEFAULT_ALIASES, ensure_default_model

    spec = "" if spec is None else str(spec).strip()
    path = Path(spec).expanduser()
    if spec and spec != "default" and path.exists():  # a local folder named like an alias wins
        return _local(path)
    if not spec or spec in DEFAULT_ALIASES:
        default = ensure_default_model()
        return Resolved(default, default.name)
    if looks_like_repo_id(spec) and not spec.endswith(".gguf"):
        snapshot = hub_snapshot(spec)
        _require_weights(snapshot, spec)
        return Resolved(snapshot, spec.rsplit("/", 1)[-1])
    raise ModelLoadError(f"model {spec!r} not found: no such file or folder; {_USAGE}")


def _local(path: Path) -> Resolved:
    if path.is_file():
        if path.suffix.lower() == ".gguf" or _has_gguf_magic(path):
            return converted_gguf(path)
        raise ModelLoadError(f"{path} is a file but not a GGUF model; {_USAGE}")
    if not path.is_dir():
        raise ModelLoadError(f"{path} is neither a file nor a folder; {_USAGE}")
    if (path / "config.json").is_file():
        _require_weights(path, str(path))
        return Resolved(path, path.resolve().name)
    ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return converted_gguf(ggufs[0])
    if ggufs:
        names = ", ".join(p.name for p in ggufs[:5])
        raise ModelLoadError(f"{path} holds several .gguf files ({names}); pass the one to load")
    raise ModelLoadError(f"{path} is not a model folder (no config.json and no .gguf file); {_USAGE}")


def _require_weights(folder: Path, what: str) -> None:
    if any(folder.glob("*.safetensors")):
        return
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ModelLoadError(
            f"{what} has only PyTorch weights; convert it first: python -m mlx_lm convert --hf-path {what}"
        )
    raise ModelLoadError(f"{what} has a config.json but no .safetensors weights")


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def converted_gguf(path: Path) -> Resolved:
    """The cached MLX conversion of a .gguf file, converting it on first use.

    Keyed by the file's real path, size and mtime: replacing the file converts
    again; the folder is named after the file so its base name is the served id.
    """
    from .gguf_convert import convert_gguf, is_current

    real = path.resolve()
    try:
        st = real.stat()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from exc
    key = hashlib.sha256(f"{real}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = models_dir() / "gguf" / key / real.stem
    if not is_current(dest):
        with file_lock(f"gguf-{key}"):
            if not is_current(dest):
                discard_dir(dest)
                convert_gguf(real, dest)
    return Resolved(dest, real.stem)
