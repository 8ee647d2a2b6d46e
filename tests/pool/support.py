"""Helpers for pool tests: a pool of named workers and gateways, and
clients that keep the response headers and every SSE event."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.processes import Proc, start_fake_worker, start_gateway, start_worker, wait_healthy


@dataclass
class Pool:
    """Named workers and any number of gateways in front of all of them."""

    workers: dict[str, tuple[Proc, str]]  # name -> (process, address)
    gateways: list[tuple[Proc, str]] = field(default_factory=list)  # (process, root url)
    log_dir: Path | None = None

    def url(self, gateway: int = 0) -> str:
        return self.gateways[gateway][1]

    def procs(self) -> list[Proc]:
        return [p for p, _ in self.workers.values()] + [p for p, _ in self.gateways]

    def health(self, gateway: int = 0) -> dict:
        return httpx.get(f"{self.url(gateway)}/health", timeout=5).json()

    def wait_ready(self, names: set[str], gateway: int = 0, timeout: float = 120.0) -> None:
        """Until the gateway reports exactly these workers ready."""
        deadline = time.monotonic() + timeout
        ready: set[str] = set()
        while time.monotonic() < deadline:
            ready = {w["worker_id"] for w in self.health(gateway)["workers"] if w["ready"]}
            if ready == names:
                return
            time.sleep(0.1)
        raise TimeoutError(f"ready workers {ready}, wanted {names}")

    def stop(self) -> None:
        for p in self.procs():
            p.stop()



def start_pool(
    workers: dict[str, Path], log_dir: Path, *, gateways: list[list[str]] | None = None, worker_args: Sequence[str] = (),
    fake_step_rate: float | None = None,
) -> Pool:
    """Workers named as given (``--name``, so their ids are known), then one
    gateway per entry of ``gateways`` (its extra arguments), each in front
    of every worker; returns once every gateway sees every worker ready.
    With ``fake_step_rate`` the workers are paced fake ones (no model)."""
    if fake_step_rate is not None:
        started = {name: start_fake_worker(log_dir, step_rate=fake_step_rate, name=name) for name in workers}
    else:
        started = {name: start_worker(model, log_dir, name=name, args=list(worker_args)) for name, model in workers.items()}
    pool = Pool(started, log_dir=log_dir)
    try:
        addresses = [a for _, a in pool.workers.values()]
        for i, args in enumerate(gateways or [[]]):
            pool.gateways.append(start_gateway(addresses, log_dir, args=list(args), name=f"gateway{i}"))
        for i in range(len(pool.gateways)):
            wait_healthy(pool.url(i), pool.procs())
            pool.wait_ready(set(workers), gateway=i)
    except Exception:
        pool.stop()
        raise
    return pool


def chat(root: str, text: str, *, max_tokens: int = 4, history: list[dict] | None = None, **extra) -> httpx.Response:
    body = {"messages": [*(history or []), {"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0.0, **extra}
    return httpx.post(f"{root}/v1/chat/completions", json=body, timeout=120)


@dataclass
class StreamResult:
    status: int
    headers: dict[str, str]
    events: list[dict] = field(default_factory=list)
    comments: int = 0  # SSE comment lines (keep-alives) seen before the first content
    done: bool = False
    error_body: dict | None = None

    @property
    def content(self) -> str:
        return "".join(e["choices"][0]["delta"].get("content", "") for e in self.events if e.get("choices"))

    @property
    def error(self) -> dict | None:
        return next((e["error"] for e in self.events if "error" in e), None)

    @property
    def finish_reason(self) -> str | None:
        return next((e["choices"][0]["finish_reason"] for e in self.events if e.get("choices") and e["choices"][0]["finish_reason"]), None)


def stream(root: str, text: str, *, max_tokens: int, on_event: Callable[[StreamResult], None] | None = None, **extra) -> StreamResult:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0.0, "stream": True, **extra}
    with httpx.stream("POST", f"{root}/v1/chat/completions", json=body, timeout=120) as r:
        res = StreamResult(r.status_code, dict(r.headers))
        if r.status_code != 200:
            r.read()
            res.error_body = r.json()
            return res
        for line in r.iter_lines():
            if line.startswith(":") and not res.content:
                res.comments += 1
            elif line == "data: [DONE]":
                res.done = True
            elif line.startswith("data: "):
                res.events.append(json.loads(line[6:]))
                if on_event:
                    on_event(res)
    return res
