"""Gateway settings (from the command line; no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GatewayConfig:
    workers: list[str] = field(default_factory=lambda: ["tcp://127.0.0.1:5555"])
    host: str = "0.0.0.0"
    port: int = 18000
    strip_thinking: bool = False
    conversation_auto_id: bool = True
    request_timeout: float | None = 600.0  # seconds a request may run at all
    keep_alive_seconds: float = 15.0  # SSE comment interval while nothing else is sent
    startup_wait: float = 0.0  # seconds to wait for a worker before serving
