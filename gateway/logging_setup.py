"""Gateway log output: human-readable text, or one JSON object per line.

Structured events (the one-line-per-request record) pass their fields as
``extra={"fields": {...}}``. The JSON formatter merges them into the line's
object, so a log shipper gets flat keys; the text formatter appends them as
JSON after the message, so a terminal stays readable and a grep still works.

The worker has its own copy (``worker/log_format.py``) that writes the same
shape: gateway and worker share nothing but the wire protocol.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

LOG_FORMATS = ("text", "json")


class LogFormatter(logging.Formatter):
    def __init__(self, json_lines: bool = False):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if not self.json_lines:
            text = super().format(record)
            return f"{text} {json.dumps(fields, default=str)}" if fields else text
        obj: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if fields:
            obj.update(fields)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, ensure_ascii=False)


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Route every logger (uvicorn's included, see cli.py) through one handler."""
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter(json_lines=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
