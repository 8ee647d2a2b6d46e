"""Gateway settings (from the command line and an optional workers file; no globals)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.messages import DEFAULT_WORKER_ENDPOINT

from .media import MediaConfig
from .ops_config import OpsConfig
from .response_store import ResponseStoreConfig


@dataclass(frozen=True)
class WorkerSpec:
    """One pool member. Unset limits take the gateway-wide flags."""

    address: str
    max_queued_requests: int | None = None
    max_queued_tokens: int | None = None


DEFAULT_WORKER = DEFAULT_WORKER_ENDPOINT  # a worker's default --bind


@dataclass
class GatewayConfig:
    """Every gateway setting and its default: ``kmlx-gateway``'s flags take
    their defaults from here (cli.py), and tests/docs checks that the docs
    quote the same ones."""

    workers: list[str] = field(default_factory=lambda: [DEFAULT_WORKER])
    worker_specs: list[WorkerSpec] = field(default_factory=list)  # from a workers file; wins over ``workers``
    host: str = "0.0.0.0"
    port: int = 18000
    strip_thinking: bool = False
    conversation_auto_id: bool = True
    request_timeout: float | None = 600.0  # seconds a request may run at all
    keep_alive_seconds: float = 15.0  # SSE comment interval while nothing else is sent
    # Backpressure and routing (docs/pool.md).
    max_queued_requests: int = 0  # per worker; 0: the worker's own --max-queued
    max_queued_tokens: int = 65536  # per worker, prompt tokens not yet prefilled; 0: no limit
    spill_factor: float = 1.5  # a conversation leaves its worker only past this multiple of the mean load
    ping_interval: float = 2.0  # seconds between liveness pings to each worker
    ping_timeout: float = 120.0  # a worker silent this long is down; one CPU prefill chunk can take many seconds
    drain_timeout: float = 30.0  # on SIGTERM, seconds running requests may take to finish
    log_level: str = "INFO"
    ops: OpsConfig = field(default_factory=OpsConfig)  # access, limits, logs (ops_config.py)
    media: MediaConfig = field(default_factory=MediaConfig)  # images and video (media.py)
    responses: ResponseStoreConfig = field(default_factory=ResponseStoreConfig)  # stored /v1/responses (response_store.py)


class WorkersFileError(ValueError):
    pass


_SPEC_KEYS = {"address", "max_queued_requests", "max_queued_tokens"}


def load_workers_file(path: str | Path) -> list[WorkerSpec]:
    """Read the pool's members from TOML (``.toml``) or JSON::

        [[workers]]
        address = "tcp://10.0.0.2:5555"
        max_queued_requests = 32      # optional, per worker
        max_queued_tokens = 200000    # optional, per worker

    A plain string is accepted in place of a table (address only).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise WorkersFileError(f"cannot read workers file {p}: {exc}") from None
    try:
        if p.suffix != ".toml":
            data: Any = json.loads(text)
        elif sys.version_info >= (3, 11):
            import tomllib

            data = tomllib.loads(text)
        else:
            raise WorkersFileError("TOML workers files need Python 3.11+; use JSON")
    except ValueError as exc:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise WorkersFileError(f"{p}: {exc}") from None
    entries = data.get("workers") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise WorkersFileError(f"{p}: expected a non-empty 'workers' list")
    specs = []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            e = {"address": e}
        if not isinstance(e, dict) or not isinstance(e.get("address"), str) or not e["address"]:
            raise WorkersFileError(f"{p}: workers[{i}] needs an 'address' string")
        unknown = set(e) - _SPEC_KEYS
        if unknown:
            raise WorkersFileError(f"{p}: workers[{i}] has unknown keys {sorted(unknown)}")
        for k in ("max_queued_requests", "max_queued_tokens"):
            if k in e and (not isinstance(e[k], int) or isinstance(e[k], bool) or e[k] < 0):
                raise WorkersFileError(f"{p}: workers[{i}].{k} must be a non-negative integer")
        specs.append(WorkerSpec(e["address"], e.get("max_queued_requests"), e.get("max_queued_tokens")))
    return specs
