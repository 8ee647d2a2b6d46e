"""Worker log output: human-readable text, or one JSON object per line.

Same shape as the gateway's (``gateway/logging_setup.py``), kept as a copy
because gateway and worker share nothing but the wire protocol. Per-request
lines pass ``extra={"fields": {"request_id": ...}}`` so that a request can be
followed from the gateway's line into the worker's by its id.
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
        created = record.created
        obj: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if fields:
            obj.update(fields)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter(json_lines=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def adopt_library_loggers() -> None:
    """transformers writes its warnings through its own stderr handler; once
    it is loaded, send them through ours so a JSON log stays all JSON."""
    import sys

    if "transformers" not in sys.modules:
        return
    from transformers.utils import logging as tf_logging

    tf_logging.disable_default_handler()
    tf_logging.enable_propagation()
