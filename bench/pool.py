"""Worker pool benchmarks, side by side in one run.

1. **Scaling** — aggregate decode throughput of the tiny model with 1, 2
   and 3 real workers behind one gateway, the same concurrent load each
   time (requests without a conversation, so they spread least-loaded).
2. **Gateway capacity** — one gateway in front of ``bench/fake_worker.py``
   (the real protocol, no compute), at rising offered token rates: how
   many tokens/s reach the clients, and how many tokens ride in each SSE
   chunk (1.0: every token its own chunk; more: the gateway fell behind
   and coalesced). Goal: the gateway is never the bottleneck (>= 20,000
   tokens/s).

The clients are asyncio raw sockets (HTTP/1.1, read to EOF, count tokens
from the final usage), so they cost little next to the gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import Proc, free_port, spawn, start_gateway, start_worker, wait_healthy

from .serving import stream_body

_USAGE = re.compile(rb'"completion_tokens":(\d+)')


@dataclass
class Load:
    tokens: int
    chunks: int
    seconds: float
    errors: int
    cpu_seconds: float | None = None  # the gateway process's CPU time during the load

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_cpu_second(self) -> float | None:
        """What one fully available core would stream: the number that does
        not depend on what else the machine is doing."""
        return self.tokens / self.cpu_seconds if self.cpu_seconds else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def post_raw(host: str, port: int, path: str, body: dict) -> bytes:
    """One POST over a bare socket, the whole answer as bytes: the least
    client-side work per token, so the gateway stays the bottleneck."""
    raw = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode() + raw)
    await writer.drain()
    parts = []
    while chunk := await reader.read(1 << 16):
        parts.append(chunk)
    writer.close()
    return b"".join(parts)


async def _one_stream(host: str, port: int, max_tokens: int, extra: dict) -> tuple[int, int, bool]:
    data = await post_raw(host, port, "/v1/chat/completions", stream_body(max_tokens, **extra))
    ok = data.startswith(b"HTTP/1.1 200")
    m = _USAGE.findall(data[-2048:])
    tokens = int(m[-1]) if ok and m else 0
    return tokens, data.count(b'"delta":{"content"'), ok and tokens > 0


async def _load(root: str, streams: int, max_tokens: int, extra: dict | None = None) -> Load:
    host, port = root.removeprefix("http://").rsplit(":", 1)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_one_stream(host, int(port), max_tokens, extra or {}) for _ in range(streams)))
    seconds = time.perf_counter() - t0
    return Load(sum(r[0] for r in results), sum(r[1] for r in results), seconds, sum(not r[2] for r in results))


def load(root: str, streams: int, max_tokens: int, extra: dict | None = None) -> Load:
    return asyncio.run(_load(root, streams, max_tokens, extra))


# --------------------------------------------------------------------------- #
def scaling(model: Path, logs: Path, *, workers: tuple[int, ...] = (1, 2, 3), streams: int = 12, max_tokens: int = 128) -> dict[int, Load]:
    out: dict[int, Load] = {}
    for n in workers:
        procs: list[Proc] = []
        try:
            addresses = []
            for i in range(n):
                p, a = start_worker(model, logs, name=f"w{i}")
                procs.append(p)
                addresses.append(a)
            gw, root = start_gateway(addresses, logs)
            procs.append(gw)
            wait_healthy(root, procs)
            _wait_all_ready(root, n)
            load(root, n * 2, 8)  # warm-up: every worker compiles its kernels
            before = [cpu_seconds(p.popen.pid) for p in procs]
            r = load(root, streams, max_tokens)
            after = [cpu_seconds(p.popen.pid) for p in procs]
            spent = [a - b for a, b in zip(after, before) if a is not None and b is not None]
            if len(spent) == n:  # every worker's CPU time could be read
                r.cpu_seconds = sum(spent)
            out[n] = r
        finally:
            for p in procs:
                p.stop()
    return out


def gateway_capacity(logs: Path, *, rates: tuple[float, ...], streams: int, tokens: int) -> list[tuple[float, Load]]:
    """``rates``: fake-worker steps per second; each step gives
    every stream one token, so the offered rate is ``rate * streams``."""
    out = []
    for rate in rates:
        port = free_port()
        fake = spawn("fake-worker", ["-m", "bench.fake_worker", "--bind", f"tcp://127.0.0.1:{port}", "--step-rate", str(rate)], logs)
        # At WARNING the gateway does not log the port it bound, so it gets one.
        gw, root = start_gateway([f"tcp://127.0.0.1:{port}"], logs, port=free_port(), args=["--log-level", "WARNING"])
        try:
            wait_healthy(root, [fake, gw])
            load(root, 4, 16)  # warm-up
            before = cpu_seconds(gw.popen.pid)
            r = load(root, streams, tokens)
            after = cpu_seconds(gw.popen.pid)
            if before is not None and after is not None:
                r.cpu_seconds = after - before
            out.append((rate, r))
        finally:
            gw.stop()
            fake.stop()
    return out


def _wait_all_ready(root: str, n: int, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(w["ready"] for w in httpx.get(f"{root}/health", timeout=5).json()["workers"]) == n:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{n} workers not ready")


def run(model: Path, *, max_tokens: int = 128, streams: int = 12, fake_streams: int = 64, fake_tokens: int = 2000) -> None:
    print(f"model: {model}   cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        print(f"\n1. scaling: {streams} concurrent streams x {max_tokens} tokens, no conversation (least-loaded)")
        res = scaling(model, logs, streams=streams, max_tokens=max_tokens)
        one = res[1].tps
        print(f"{'workers':10}{'aggregate tok/s':>18}{'vs 1 worker':>14}{'cores busy':>12}{'errors':>8}")
        for n, r in res.items():
            busy = f"{r.cpu_seconds / r.seconds:12.2f}" if r.cpu_seconds is not None else f"{'n/a':>12}"
            print(f"{n:<10}{r.tps:18.1f}{r.tps / one:14.2f}{busy}{r.errors:8d}")
        print(f"(cores busy: CPU time of the workers and the gateway over wall time; this machine has {os.cpu_count()})")

        print(f"\n2. gateway capacity: {fake_streams} streams x {fake_tokens} tokens from a fake worker (no compute)")
        rates = (250.0, 500.0, 1000.0, 2000.0)
        cap = gateway_capacity(logs, rates=rates, streams=fake_streams, tokens=fake_tokens)
        print(f"{'offered tok/s':>14}{'delivered tok/s':>17}{'ratio':>8}{'tokens/chunk':>14}{'gateway CPU s':>15}{'tok per CPU-s':>15}{'errors':>8}")
        for rate, r in cap:
            offered = f"{rate * fake_streams:,.0f}" if rate else "unpaced"
            ratio = f"{r.tps / (rate * fake_streams):8.2f}" if rate else f"{'':8}"
            cpu = f"{r.cpu_seconds:15.2f}" if r.cpu_seconds is not None else f"{'n/a':>15}"
            per_cpu = f"{r.tokens_per_cpu_second:15,.0f}" if r.tokens_per_cpu_second else f"{'n/a':>15}"
            print(f"{offered:>14}{r.tps:17,.0f}{ratio}{r.tokens / max(1, r.chunks):14.2f}{cpu}{per_cpu}{r.errors:8d}")
        print("(tokens/chunk > 1: the gateway fell behind and merged queued tokens into one SSE chunk;\n"
              " tok per CPU-s: the gateway's capacity on one free core, whatever else shares this machine)")
