"""Where the client's defaults come from: constants, environment, state paths.

Kept in one place so `--help`, the docs and the code agree on names.
"""

from __future__ import annotations

import os
from pathlib import Path

# The gateway listens on 18000 by default (kamiwaza-mlx's port); kamiwaza-mlx's
# own client defaulted elsewhere, a bug users hit on first run.
DEFAULT_BASE_URL = "http://localhost:18000/v1"

ENV_BASE_URL = "KMLX_BASE_URL"
ENV_API_KEY = "KMLX_API_KEY"
ENV_MODEL = "KMLX_MODEL"
ENV_OPENAI_API_KEY = "OPENAI_API_KEY"  # honoured so existing OpenAI setups just work

# What to tell someone whose gateway is not running.
START_HINT = (
    "Start a worker and a gateway with `kmlx serve` (or `make run` in a checkout; "
    "`kmlx-worker` + `kmlx-gateway` to run them apart), "
    "or point elsewhere with --base-url / $KMLX_BASE_URL."
)


def state_dir() -> Path:
    """Per-user state (chat history), following the XDG base-directory spec."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "kmlx"


def history_path() -> Path:
    return state_dir() / "chat_history"


def ensure_private_file(path: Path) -> Path:
    """Create `path` (and its folder) readable only by the user: chat history
    can hold anything people typed."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    return path
