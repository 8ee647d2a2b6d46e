"""Hugging Face repo ids: the local HF cache first, then the hub, failing in one line.

Downloads go through huggingface_hub (what mlx-lm / mlx-vlm use themselves),
so a repo fetched by either tool is found in the same cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ModelLoadError
from .progress import step

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# mlx-lm's own patterns, plus what mlx-vlm processors need.
_PATTERNS = [
    "*.json", "model*.safetensors", "*.py", "tokenizer.model", "*.tiktoken",
    "tiktoken.model", "*.txt", "*.jsonl", "*.jinja",
]
_ETAG_TIMEOUT_S = 10
_LOCAL_HINT = "pass a local path instead (an MLX model folder or a .gguf file)"


def looks_like_repo_id(spec: str) -> bool:
    return bool(REPO_ID.match(spec)) and ".." not in spec and "--" not in spec


def hub_snapshot(repo_id: str) -> Path:
    """Local folder holding `repo_id`'s files (from the HF cache or downloaded)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelLoadError(f"loading {repo_id} from Hugging Face needs huggingface_hub: {exc}") from exc
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=_PATTERNS))
    except Exception:  # not cached (the library's exception types vary by version)
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(
            f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {_LOCAL_HINT}"
        )
    try:
        with step(f"downloading {repo_id} from the Hugging Face hub"):
            return Path(snapshot_download(repo_id, allow_patterns=_PATTERNS, etag_timeout=_ETAG_TIMEOUT_S))
    except Exception as exc:
        raise ModelLoadError(_explain(repo_id, exc)) from exc


def _explain(repo_id: str, exc: Exception) -> str:
    kind = type(exc).__name__
    reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), kind)[:160]
    if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
        return f"{repo_id} was not found on the Hugging Face hub (or needs a login): {reason}"
    return (
        f"cannot reach the Hugging Face hub to fetch {repo_id} and it is not in the local cache "
        f"({reason}); {_LOCAL_HINT}"
    )
