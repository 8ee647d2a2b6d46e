"""Start real worker and gateway processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def spawn(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{int(time.time() * 1000)}.log"
    with open(log_path, "wb") as fh:  # the child keeps its own copy of the descriptor
        popen = subprocess.Popen(
            [sys.executable, *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    return Proc(name, popen, log_path)


def start_worker(
    model: str | Path, log_dir: Path, *, port: int | None = None, args: Sequence[str] = (), name: str = "worker",
    env: dict[str, str] | None = None,
) -> tuple[Proc, str]:
    port = port or free_port()
    address = f"tcp://127.0.0.1:{port}"
    args = list(args)
    # Caches on disk are private to the test run unless a test picks the dirs.
    cache_root = log_dir / f"caches-{name}-{port}"
    if "--prompt-cache-dir" not in args:
        args += ["--prompt-cache-dir", str(cache_root / "prefix")]
    if "--conversation-disk-dir" not in args:
        args += ["--conversation-disk-dir", str(cache_root / "conversations")]
    proc = spawn(name, ["-m", "worker", "-m", str(model), "--bind", address, "--name", name, *args], log_dir, env)
    return proc, address


def start_gateway(workers: list[str], log_dir: Path, *, port: int | None = None, args: Sequence[str] = (), name: str = "gateway") -> tuple[Proc, str]:
    port = port or free_port()
    worker_args = [a for w in workers for a in ("--worker", w)]
    proc = spawn(name, ["-m", "gateway", "--host", "127.0.0.1", "--port", str(port), *worker_args, *args], log_dir)
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(root_url: str, procs: list[Proc], timeout: float = 120.0) -> None:
    """Wait until /health says 200; fail fast with the logs if a process died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{p.log()[-4000:]}")
        try:
            r = httpx.get(f"{root_url}/health", timeout=2)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in procs)
    raise TimeoutError(f"{root_url} not healthy after {timeout}s ({last})\n{logs}")


@dataclass
class Stack:
    """A gateway in front of one or more workers, all real processes."""

    root_url: str
    gateway: Proc
    workers: list[Proc]
    worker_addresses: list[str]
    extra: list[Proc] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def worker_stats(self) -> list[dict]:
        return httpx.get(f"{self.root_url}/v1/stats", timeout=10).json()["workers"]

    def stop(self) -> None:
        for p in [self.gateway, *self.workers, *self.extra]:
            p.stop()


def start_stack(
    model: str | Path, log_dir: Path, *, worker_args: Sequence[str] = (), gateway_args: Sequence[str] = (),
    worker_env: dict[str, str] | None = None,
) -> Stack:
    worker, address = start_worker(model, log_dir, args=list(worker_args), env=worker_env)
    gateway, root = start_gateway([address], log_dir, args=list(gateway_args))
    stack = Stack(root, gateway, [worker], [address])
    try:
        wait_healthy(root, [gateway, worker])
    except Exception:
        stack.stop()
        raise
    return stack
