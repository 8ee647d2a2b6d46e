"""Serving overhead, side by side in one run.

1. In-process ``mlx_lm.stream_generate`` on the model: the ceiling.
2. The same model through real gateway + worker processes (HTTP, SSE,
   ZeroMQ): single-stream decode speed and added time to first token.
3. Aggregate decode throughput with 1, 4 and 8 concurrent streams.

Default model: the tiny one, where per-token overhead is most visible.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

PROMPT = "Write a long story about a lighthouse keeper."


@dataclass
class Run:
    ttft: float
    decode_tps: float
    tokens: int


def in_process(model_path: Path, max_tokens: int, repeats: int) -> list[Run]:
    """The baseline runs in its own process, like the worker: an idle MLX
    (and its BLAS threads) in this measuring process would skew the served runs."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.serving", str(model_path), str(max_tokens), str(repeats)],
        check=True, capture_output=True, text=True,
    ).stdout
    return [Run(**r) for r in json.loads(out.strip().splitlines()[-1])]


def _in_process_child(model_path: Path, max_tokens: int, repeats: int) -> list[Run]:
    from mlx_lm import stream_generate

    from worker.models import ensure_fast_blas, load_model

    ensure_fast_blas()
    loaded = load_model(str(model_path))  # the very weights the worker serves
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    runs = []
    for i in range(repeats + 1):  # first run warms up kernels
        t0 = time.perf_counter()
        first = last = None
        n = 0
        for _ in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens):
            now = time.perf_counter()
            first = first or now
            last = now
            n += 1
        if i and first and last and n > 1:
            runs.append(Run(first - t0, (n - 1) / (last - first), n))
    return runs


def stream_body(max_tokens: int, **extra: object) -> dict:
    """A streamed request that generates exactly ``max_tokens`` and never
    touches a conversation cache (each run measures the same work)."""
    return {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "reset_conversation": True,
        **extra,
    }


def stream_once(base_url: str, max_tokens: int, client: httpx.Client | None = None) -> Run:
    body = stream_body(max_tokens)
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    # A client made per request would add its own set-up (an SSL context,
    # tens of ms) to the measured time to first token.
    client = client or _client()
    with client.stream("POST", f"{base_url}/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
    assert first and last
    # Client-side clock: first content chunk to last, over the tokens between.
    return Run(first - t0, (tokens - 1) / (last - first), tokens)


_local = threading.local()


def _client() -> httpx.Client:
    if not hasattr(_local, "client"):
        _local.client = httpx.Client()
    return _local.client


def through_gateway(base_url: str, max_tokens: int, repeats: int) -> list[Run]:
    stream_once(base_url, 8)  # warm-up
    return [stream_once(base_url, max_tokens) for _ in range(repeats)]


def aggregate(base_url: str, streams: int, max_tokens: int) -> float:
    runs: list[Run] = []
    lock = threading.Lock()

    def one() -> None:
        run = stream_once(base_url, max_tokens)
        with lock:
            runs.append(run)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(r.tokens for r in runs) / (time.perf_counter() - t0)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run(model_path: Path, *, max_tokens: int = 256, repeats: int = 3, concurrency: tuple[int, ...] = (1, 4, 8)) -> None:
    from tests.support.processes import start_stack

    print(f"model: {model_path}")
    print(f"single stream: {max_tokens} new tokens, median of {repeats}\n")
    base = in_process(model_path, max_tokens, repeats)
    with tempfile.TemporaryDirectory() as logs:
        stack = start_stack(model_path, Path(logs))
        try:
            served = through_gateway(stack.base_url, max_tokens, repeats)
            agg = {n: aggregate(stack.base_url, n, max_tokens) for n in concurrency}
        finally:
            stack.stop()

    b_tps, s_tps = median([r.decode_tps for r in base]), median([r.decode_tps for r in served])
    b_ttft, s_ttft = median([r.ttft for r in base]), median([r.ttft for r in served])
    print(f"{'':28}{'in-process':>14}{'gateway+worker':>16}{'ratio':>8}")
    print(f"{'decode tok/s (1 stream)':28}{b_tps:14.1f}{s_tps:16.1f}{s_tps / b_tps:8.3f}")
    print(f"{'time to first token (ms)':28}{b_ttft * 1000:14.1f}{s_ttft * 1000:16.1f}{'':>8}")
    print(f"{'added TTFT (ms)':28}{'':14}{(s_ttft - b_ttft) * 1000:16.1f}\n")
    print(f"{'concurrent streams':28}{'aggregate tok/s':>16}{'vs 1 stream':>14}")
    one = agg[concurrency[0]]
    for n, tps in agg.items():
        print(f"{n:<28}{tps:16.1f}{tps / one:14.2f}")


if __name__ == "__main__":  # the in-process baseline's own process
    _runs = _in_process_child(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps([asdict(r) for r in _runs]))
