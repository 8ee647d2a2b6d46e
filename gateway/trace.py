"""Opt-in request tracing (``--trace-requests-path FILE``): JSONL with text.

The normal request log never holds prompt or answer text. An operator who
needs it (debugging a template, collecting an eval set) asks for this file;
it is created private to the user, since prompts are often sensitive.
Lines are small and appended with one write each, so a reader never sees
half a line from a finished request.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, TextIO


class TraceWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fh: TextIO = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, event: str, fields: dict[str, Any]) -> None:
        record = {"ts": round(time.time(), 3), **fields, "event": event}
        self._fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
