"""`kmlx serve`: a worker and a gateway on this machine, in one command.

Both are started as real child processes (exactly what launchd or a user
would run by hand); this only supervises them: it waits for the worker to
be ready, forwards Ctrl-C / SIGTERM to both, and exits when either dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

serve_app = typer.Typer(add_completion=False)


@serve_app.command("serve")
def serve(
    model: str = typer.Option(None, "--model", "-m", help="MLX folder, HF repo id, .gguf file (default: the built-in SmolLM2); "
                              "with --models-dir, the one to load at start"),
    models_dir: str = typer.Option(None, "--models-dir", help="serve every model in this folder, each loaded on first use"),
    host: str = typer.Option("127.0.0.1", help="gateway address to listen on (0.0.0.0 for the network)"),
    port: int = typer.Option(18000, help="gateway HTTP port"),
    worker_port: int = typer.Option(5555, help="worker ZeroMQ port (loopback only)"),
    worker_arg: list[str] = typer.Option([], "--worker-arg", help="extra kmlx-worker argument (repeatable)"),
    gateway_arg: list[str] = typer.Option([], "--gateway-arg", help="extra kmlx-gateway argument (repeatable)"),
) -> None:
    """Start one worker and one gateway, and stop both on Ctrl-C."""
    address = f"tcp://127.0.0.1:{worker_port}"
    dir_args = ["--models-dir", str(Path(models_dir).expanduser())] if models_dir else []
    worker_cmd = [sys.executable, "-m", "worker", "--bind", address, *dir_args, *(["-m", model] if model else []), *worker_arg]
    gateway_cmd = [sys.executable, "-m", "gateway", "--host", host, "--port", str(port), "--worker", address, *gateway_arg]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(worker_cmd, env=env), subprocess.Popen(gateway_cmd, env=env)]
    shown = host if host != "0.0.0.0" else "localhost"
    typer.echo(f"kmlx: gateway on http://{shown}:{port}/v1, worker on {address} (Ctrl-C stops both)", err=True)

    def stop(*_args: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        stop()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
    code = max((p.returncode or 0) for p in procs)
    raise typer.Exit(code if code > 0 else 0)


def main() -> None:
    serve_app()


if __name__ == "__main__":
    main()
