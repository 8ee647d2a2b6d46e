"""kmlx vs mlx_lm.server vs mlx-lm in-process, side by side, on whatever
backend MLX runs on here (CPU, Metal, CUDA): ``python -m bench backends``.

The three serve the same model folder, the same weights (as stored: kmlx
runs with ``--weights native``), the same prompts, greedy unless
``--temperature``:

- **kmlx**: a real gateway and worker, over HTTP;
- **mlx_lm.server**: started on loopback against the same folder (no hub),
  over HTTP (bench/mlx_lm_server.py);
- **in-process**: mlx-lm's ``BatchGenerator`` stepped in a process of its
  own, prefill included (bench/inprocess.py): the ceiling for a server
  built on it.

All three stay up for the whole run and take turns, row by row and repeat
by repeat in rotating order, so a machine whose load drifts (a shared
one) skews them alike; each cell is the median of ``--repeats`` runs and
the load average is printed beside the table. Rows:

- 1 stream: decode tok/s (client-side, first content to last) and TTFT;
- N streams at once: aggregate completion tok/s, prefill included;
- P prompts of T tokens, one new token each: prompt tok/s until the last
  first token;
- first request after ready: its TTFT, over the steady single-stream TTFT.

Goals (fast-backends issue), printed beside the ratios: prefill >= 1.0x
mlx_lm.server; 64 streams >= 0.9x in-process; one stream >= 0.97x
in-process; first request <= 1.5x steady.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import Proc, free_port, spawn, start_stack, wait_healthy

from .streams import Load, Stream, chat_body, run_load

WORDS = ["harbor", "lantern", "granite", "tide", "keeper", "ledger", "storm", "gull", "rope", "beacon", "fog", "salt", "brass", "shutter", "compass", "reef", "window", "ladder", "kettle", "signal", "north", "pebble", "anchor", "whistle", "cloud", "timber"]


@dataclass
class Sizes:
    streams: list[int]
    max_tokens: int
    prefill_prompts: int
    prefill_tokens: int
    repeats: int
    temperature: float


class Contender:
    name: str

    def load(self, bodies: list[dict[str, Any]]) -> Load:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Http(Contender):
    def __init__(self, name: str, url: str, procs: list[Proc], extra: dict[str, Any], stop: Callable[[], object]):
        self.name, self.url, self.procs, self.extra, self._stop = name, url, procs, extra, stop

    def load(self, bodies: list[dict[str, Any]]) -> Load:
        return run_load(self.url, [{**b, **self.extra} for b in bodies])

    def close(self) -> None:
        self._stop()


class InProcess(Contender):
    name = "in-process"

    def __init__(self, model: Path, log_dir: Path):
        self.log_path = log_dir / "inprocess.log"
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.inprocess", str(model)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, cwd=Path(__file__).resolve().parents[1], text=True,
            )
        self._read()  # {"ready": true} once loaded

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the in-process baseline exited ({self.proc.wait()}):\n{self.log_path.read_text()[-3000:]}")
        return json.loads(line)

    def load(self, bodies: list[dict[str, Any]]) -> Load:
        assert self.proc.stdin is not None
        b = bodies[0]
        command = {"messages": [x["messages"] for x in bodies], "max_tokens": b["max_tokens"], "temperature": b["temperature"]}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        result = self._read()
        return Load([Stream(**s) for s in result["streams"]], result["seconds"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_kmlx(model: Path, log_dir: Path, sizes: Sizes, worker_args: list[str]) -> Http:
    most = max(sizes.streams + [sizes.prefill_prompts])
    stack = start_stack(
        model, log_dir,
        worker_args=["--max-running", str(most), "--max-queued", str(2 * most), "--weights", "native", *worker_args],
        gateway_args=["--no-conversation-auto-id", "--max-queued-tokens", "0", "--request-timeout", "3600"],
    )
    return Http("kmlx", f"{stack.base_url}/chat/completions", [stack.gateway, *stack.workers], {"ignore_eos": True}, stack.stop)


def start_mlx_lm_server(model: Path, log_dir: Path, sizes: Sizes) -> Http:
    port = free_port()
    most = max(sizes.streams + [sizes.prefill_prompts])
    proc = spawn("mlx_lm.server", [
        "-m", "bench.mlx_lm_server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--decode-concurrency", str(most), "--max-tokens", str(sizes.max_tokens), "--log-level", "WARNING",
    ], log_dir)
    root = f"http://127.0.0.1:{port}"
    wait_healthy(root, [proc], timeout=600)
    return Http("mlx_lm.server", f"{root}/v1/chat/completions", [proc], {}, proc.stop)


# --------------------------------------------------------------------- prompts
def story(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Story {i}: write a long story about a lighthouse keeper and the ship number {i}."}]


def long_prompt(i: int, tokens: int, tokenizer: Any) -> list[dict[str, Any]]:
    """A user message of about ``tokens`` tokens (with its template), different from the first word on."""
    import random

    rng = random.Random(i)
    words = [f"{i}:"]
    text = ""
    while True:
        words += [rng.choice(WORDS) for _ in range(64)]
        text = " ".join(words)
        if len(tokenizer.encode(text).ids) >= tokens - 40:  # leave room for the template
            return [{"role": "user", "content": text}]


# --------------------------------------------------------------------- rows
@dataclass
class Row:
    label: str
    unit: str
    values: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    goal: tuple[str, float] | None = None  # (the contender to compare with, the least ratio wanted)
    lower_is_better: bool = False

    def add(self, name: str, value: float | None, errors: int = 0) -> None:
        self.values.setdefault(name, [])
        if value is not None:
            self.values[name].append(value)
        self.errors[name] = self.errors.get(name, 0) + errors

    def median(self, name: str) -> float | None:
        xs = self.values.get(name) or []
        return statistics.median(xs) if xs else None


def take_turns(contenders: list[Contender], repeats: int, body: Callable[[Contender, int], None]) -> None:
    """Each repeat runs every contender once, the order rotating, so drift in
    the machine's load falls on all of them alike."""
    for r in range(repeats):
        for k in range(len(contenders)):
            body(contenders[(r + k) % len(contenders)], r)


def measure(contenders: list[Contender], sizes: Sizes, tokenizer: Any, first: dict[str, float],
            done: Callable[[Row], None] = lambda row: None) -> list[Row]:
    """Every row; ``done`` sees each as it is measured (a run cut short still
    says what it had)."""
    t = sizes.temperature
    single = [Row("1 stream: decode", "tok/s", goal=("in-process", 0.97)), Row("1 stream: TTFT", "ms", lower_is_better=True)]

    def one(c: Contender, r: int) -> None:
        load = c.load([chat_body(story(1000 + r), sizes.max_tokens, temperature=t)])
        s = load.ok[0] if load.ok else None
        single[0].add(c.name, s.decode_tps if s else None, load.errors)
        single[1].add(c.name, s.ttft * 1000 if s and s.ttft is not None else None, load.errors)

    take_turns(contenders, sizes.repeats, one)
    rows = list(single)
    for row in single:
        done(row)
    for n in sizes.streams:
        if n == 1:
            continue
        row = Row(f"{n} streams x {sizes.max_tokens} tokens", "tok/s", goal=("in-process", 0.9) if n >= 64 else None)

        def many(c: Contender, r: int, n: int = n, row: Row = row) -> None:
            load = c.load([chat_body(story(100 * r + i), sizes.max_tokens, temperature=t) for i in range(n)])
            row.add(c.name, load.tps if load.ok else None, load.errors)

        take_turns(contenders, sizes.repeats, many)
        rows.append(row)
        done(row)
    if sizes.prefill_prompts:
        row = Row(f"{sizes.prefill_prompts} x {sizes.prefill_tokens}-token prompts: prefill", "tok/s", goal=("mlx_lm.server", 1.0))

        def prefill(c: Contender, r: int) -> None:
            prompts = [long_prompt(10_000 * (r + 1) + i, sizes.prefill_tokens, tokenizer) for i in range(sizes.prefill_prompts)]
            load = c.load([chat_body(p, 1, temperature=t) for p in prompts])
            row.add(c.name, load.prefill_tps if load.ok else None, load.errors)

        take_turns(contenders, sizes.repeats, prefill)
        rows.append(row)
        done(row)
    ratio_row = Row("first request after ready: TTFT / steady TTFT", "x", lower_is_better=True)
    for c in contenders:
        steady = single[1].median(c.name)
        ratio_row.add(c.name, first[c.name] * 1000 / steady if c.name in first and steady else None)
    ratio_row.goal = None
    rows.append(ratio_row)
    return rows


def first_request(c: Contender, sizes: Sizes) -> float | None:
    """TTFT of the very first request after the contender said it is ready (seconds)."""
    load = c.load([chat_body(story(0), 8, temperature=sizes.temperature)])
    return load.ok[0].ttft if load.ok else None


# --------------------------------------------------------------------- output
def print_table(rows: list[Row], names: list[str]) -> None:
    def cell(v: float | None) -> str:
        return "—" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.2f}")

    head = f"{'':46}" + "".join(f"{n:>15}" for n in names)
    others = [n for n in names if n != "kmlx"]
    head += "".join(f"{'kmlx/' + n.split('.')[0]:>18}" for n in others) + "   goal"
    print(head)
    for row in rows:
        line = f"{row.label + ' (' + row.unit + ')':46}" + "".join(f"{cell(row.median(n)):>15}" for n in names)
        k = row.median("kmlx")
        for n in others:
            o = row.median(n)
            line += f"{(f'{k / o:.2f}x' if k and o else '—'):>18}"
        if row.goal:
            line += f"   >= {row.goal[1]:.2f}x {row.goal[0]}"
        if row.label.startswith("first request"):
            line += "   kmlx <= 1.50x"
        errs = {n: e for n, e in row.errors.items() if e}
        if errs:
            line += f"   errors: {errs}"
        print(line)
    spread = [
        f"{row.label.split(':')[0]} {n}: {min(v):,.1f}–{max(v):,.1f}"
        for row in rows for n, v in row.values.items() if len(v) > 1 and max(v) > 1.2 * min(v)
    ]
    if spread:
        print("\nspread over repeats > 20 %: " + "; ".join(spread))


def describe_backend() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import mlx.core as mx; print(mx.default_device(), mx.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    return out


def default_sizes(args: Any, gpu: bool) -> Sizes:
    """Defaults that keep a CPU run within a few minutes and give a GPU the issue's table."""
    return Sizes(
        streams=[int(s) for s in (args.backend_streams or "1,8,32,64").split(",")],
        max_tokens=args.max_tokens or (128 if gpu else 32),
        prefill_prompts=args.prefill_prompts if args.prefill_prompts is not None else 4,
        prefill_tokens=args.prefill_tokens or (4096 if gpu else 1024),
        repeats=args.repeats or 3,
        temperature=args.temperature,
    )


def run(model: Path, args: Any) -> None:
    from tokenizers import Tokenizer

    backend = describe_backend()
    sizes = default_sizes(args, gpu="gpu" in backend)
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    wanted = (args.contenders or "kmlx,mlx_lm.server,in-process").split(",")
    print(f"backend: {backend}; model: {model}")
    print(f"sizes: {sizes}")
    load_before = os.getloadavg()
    contenders: list[Contender] = []
    first: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as logs:
        try:
            starters: dict[str, Callable[[], Contender]] = {
                "kmlx": lambda: start_kmlx(model, Path(logs), sizes, (args.kmlx_args or "").split()),
                "mlx_lm.server": lambda: start_mlx_lm_server(model, Path(logs), sizes),
                "in-process": lambda: InProcess(model, Path(logs)),
            }
            for name in wanted:
                t0 = time.perf_counter()
                c = starters[name]()
                contenders.append(c)
                ttft = first_request(c, sizes)
                if ttft is not None:
                    first[c.name] = ttft
                print(f"{c.name}: ready in {time.perf_counter() - t0:.1f} s, first request TTFT {ttft and ttft * 1000:.0f} ms", flush=True)
            names = [c.name for c in contenders]
            rows = measure(contenders, sizes, tokenizer, first,
                           done=lambda row: print(f"  measured {row.label}: " + ", ".join(
                               f"{n} {row.median(n):,.1f} {row.unit}" for n in names if row.median(n) is not None), flush=True))
        finally:
            for c in contenders:
                c.close()
    load_after = os.getloadavg()
    print(f"\nmedian of {sizes.repeats}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"({os.cpu_count()} CPUs)\n")
    print_table(rows, [c.name for c in contenders])
