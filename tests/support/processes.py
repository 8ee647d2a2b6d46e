"""Start real worker and gateway processes for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port that was free a moment ago. Another process may take it before
    the caller binds it: only for a test that must name a worker's address
    before the worker exists. Everything else binds port 0 and reads the
    port the process reports (``start_worker``, ``start_gateway``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reported(proc: Proc, pattern: str, timeout: float = 60.0) -> str:
    """The first match of ``pattern`` (its group 1) in ``proc``'s log: how a
    process started on port 0 tells which port it got."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, proc.log())
        if m:
            return m.group(1)
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()[-4000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name} did not report /{pattern}/ within {timeout}s:\n{proc.log()[-4000:]}")


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
    model: str | Path | None, log_dir: Path, *, port: int | None = None, args: Sequence[str] = (),
    name: str = "worker", env: dict[str, str] | None = None,
) -> tuple[Proc, str]:
    """A worker process on ``model`` (None: no -m, e.g. with --models-dir in
    ``args``) and its address. Without ``port`` it binds port 0 and the
    address is the one it reports (it binds before loading the model, so
    this returns quickly)."""
    args = list(args)
    bind = f"tcp://127.0.0.1:{port or 0}"
    # Caches on disk are private to the test run unless a test picks the dirs;
    # a worker restarted on the same address finds the ones it had.
    cache_root = _CACHE_ROOTS.get(bind) or log_dir / f"caches-{name}-{time.monotonic_ns()}"
    if "--prompt-cache-dir" not in args:
        args += ["--prompt-cache-dir", str(cache_root / "prefix")]
    if "--conversation-disk-dir" not in args:
        args += ["--conversation-disk-dir", str(cache_root / "conversations")]
    model_args = ["-m", str(model)] if model is not None else []
    proc = spawn(name, ["-m", "worker", *model_args, "--bind", bind, "--name", name, *args], log_dir, env)
    address = bind if port else reported(proc, r"listening on (tcp://127\.0\.0\.1:\d+)")
    _CACHE_ROOTS[address] = cache_root
    return proc, address


_CACHE_ROOTS: dict[str, Path] = {}  # worker address -> its cache directories


def start_gateway(workers: list[str], log_dir: Path, *, port: int | None = None, args: Sequence[str] = (), name: str = "gateway") -> tuple[Proc, str]:
    """A gateway process and its root URL. Without ``port`` it listens on
    port 0 and the URL is the one it reports."""
    worker_args = [a for w in workers for a in ("--worker", w)]
    proc = spawn(name, ["-m", "gateway", "--host", "127.0.0.1", "--port", str(port or 0), *worker_args, *args], log_dir)
    root = f"http://127.0.0.1:{port}" if port else reported(proc, r"running on (http://127\.0\.0\.1:\d+)")
    return proc, root


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; an AssertionError naming ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout:.0f} s: {what}")


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
    return _stack_in_front_of(start_worker(model, log_dir, args=list(worker_args), env=worker_env), log_dir, gateway_args)


def _stack_in_front_of(worker_and_address: tuple[Proc, str], log_dir: Path, gateway_args: Sequence[str]) -> Stack:
    """A gateway in front of a started worker; returns once /health is 200."""
    worker, address = worker_and_address
    gateway, root = start_gateway([address], log_dir, args=list(gateway_args))
    stack = Stack(root, gateway, [worker], [address])
    try:
        wait_healthy(root, [gateway, worker])
    except Exception:
        stack.stop()
        raise
    return stack


def start_fake_worker(log_dir: Path, *, step_rate: float, name: str = "fake-worker", port: int | None = None) -> tuple[Proc, str]:
    """``bench/fake_worker.py``: the real protocol, no model, one token per
    request per step at ``step_rate`` steps a second. For tests where the
    pace matters (a stream still running when the client leaves or a
    process dies), so the pace does not depend on how fast the CPU is."""
    bind = f"tcp://127.0.0.1:{port or 0}"
    proc = spawn(name, ["-m", "bench.fake_worker", "--bind", bind, "--step-rate", str(step_rate), "--name", name], log_dir)
    address = bind if port else reported(proc, r"listening on (tcp://127\.0\.0\.1:\d+)")
    return proc, address


def start_fake_stack(log_dir: Path, *, step_rate: float, gateway_args: Sequence[str] = ()) -> Stack:
    """A real gateway in front of one paced fake worker."""
    return _stack_in_front_of(start_fake_worker(log_dir, step_rate=step_rate), log_dir, gateway_args)

