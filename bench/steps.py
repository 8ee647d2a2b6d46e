"""What one decode step costs, in-process, at 1, 8 and 64 running sequences:
``python -m bench steps``.

Three layers, each stepped alone on the same model and prompts, greedy or
sampled (``--temperature``):

- **mlx-lm**: ``BatchGenerator.next()`` (one sampler object for the batch,
  its best case);
- **kmlx batch**: ``worker.batch.Batch.step()``, kmlx's own decode step;
- **kmlx scheduler**: ``Scheduler.step()``: the batch step plus everything
  kmlx does per token (detokenizing, stop strings, tool-call and reasoning
  parsing, building the outputs), each request with the sampler a server
  gives it.

Per layer: the median wall time of a step and the median CPU time of the
thread that runs it. MLX evaluates on threads of its own, so that CPU time
is the Python (graph building, per-row work) a step costs the compute
thread — the part that bounds a step when the GPU is fast, and the number
that hardly moves with the machine's load. ``--profile`` prints the
functions that take it (cProfile).
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MEASURED = 40  # steps timed per layer and batch size, after the warm-up ones


def run(model: Path, *, sizes: tuple[int, ...] = (1, 8, 64), temperature: float = 0.0, profile: bool = False) -> None:
    print(f"model: {model}; temperature {temperature}; median of {MEASURED} steps, load average {os.getloadavg()[0]:.1f}\n")
    print(f"{'sequences':>10}{'layer':>18}{'step wall ms':>15}{'thread CPU ms':>15}{'CPU / mlx-lm':>14}")
    for n in sizes:
        base = None
        for layer in ("mlx-lm", "kmlx batch", "kmlx scheduler"):
            # Each measurement in a fresh process: no layer inherits another's compiled kernels or caches.
            out = subprocess.run(
                [sys.executable, "-m", "bench.steps", str(model), layer, str(n), str(temperature), "1" if profile else "0"],
                check=True, capture_output=not profile, text=True,
            ).stdout if not profile else _run_profiled(model, layer, n, temperature)
            wall, cpu = json.loads(out.strip().splitlines()[-1])
            base = base or cpu
            print(f"{n:>10}{layer:>18}{wall * 1000:15.2f}{cpu * 1000:15.2f}{cpu / base:14.2f}", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")


def _run_profiled(model: Path, layer: str, n: int, temperature: float) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.steps", str(model), layer, str(n), str(temperature), "1"],
        check=True, capture_output=True, text=True,
    )
    lines = proc.stdout.strip().splitlines()
    print("\n".join(lines[:-1]))
    return lines[-1]


def _measure(model_path: str, layer: str, n: int, temperature: float, profile: bool) -> tuple[float, float]:
    from worker.models import ensure_fast_blas, load_model

    ensure_fast_blas()
    loaded = load_model(model_path, weights="native")
    tok = loaded.tokenizer
    messages = [[{"role": "user", "content": f"Story {i}: tell me about the lighthouse number {i}."}] for i in range(n)]
    max_tokens = MEASURED + 64
    step = _stepper(loaded, layer, messages, max_tokens, temperature, tok)
    for _ in range(24):  # prefill, and the first decode steps (kernel compilation)
        step()
    walls, cpus = [], []
    prof = cProfile.Profile() if profile else None
    for _ in range(MEASURED):
        if prof:
            prof.enable()
        w, c = time.perf_counter(), time.thread_time()
        step()
        cpus.append(time.thread_time() - c)
        walls.append(time.perf_counter() - w)
        if prof:
            prof.disable()
    if prof:
        print(f"--- {layer}, {n} sequences: where the compute thread's time goes")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(12)
    return statistics.median(walls), statistics.median(cpus)


def _stepper(loaded: Any, layer: str, messages: list[Any], max_tokens: int, temperature: float, tok: Any) -> Callable[[], Any]:
    prompts = [tok.apply_chat_template(m, add_generation_prompt=True) for m in messages]
    n = len(prompts)
    if layer == "mlx-lm":
        from mlx_lm.generate import BatchGenerator
        from mlx_lm.sample_utils import make_sampler

        gen = BatchGenerator(loaded.model, stop_tokens=None, completion_batch_size=n, prefill_batch_size=min(n, 8),
                             sampler=make_sampler(temperature) if temperature > 0 else None)
        gen.insert(prompts, max_tokens=[max_tokens] * n)
        return gen.next
    if layer == "kmlx batch":
        from protocol.messages import SamplingParams
        from worker.batch import Batch, SequenceSpec
        from worker.generation_config import build_defaults
        from worker.sampling import make_sampler as kmlx_sampler

        batch = Batch(loaded.model, eos_token_ids=tok.eos_token_ids, max_running=n, prefill_chunk=512)
        sampling = build_defaults(None).resolve(SamplingParams(temperature=temperature))
        for p in prompts:
            batch.add(SequenceSpec(tokens=p, max_tokens=max_tokens, sampler=kmlx_sampler(sampling), stop_on_eos=False))
        return batch.step
    from protocol.chat import chat_messages
    from protocol.messages import ChatRequest, SamplingParams
    from worker.scheduler import Scheduler, SchedulerLimits

    sched = Scheduler(loaded.model, tok, model_id="bench", context_length=loaded.context_length,
                      limits=SchedulerLimits(max_running=n, prefill_chunk=512))
    for i, m in enumerate(messages):
        sched.admit(b"bench", ChatRequest(f"r{i}", chat_messages(m), SamplingParams(max_tokens=max_tokens, temperature=temperature, ignore_eos=True)))
    return sched.step


if __name__ == "__main__":
    _model, _layer, _n, _t, _p = sys.argv[1:6]
    print(json.dumps(_measure(_model, _layer, int(_n), float(_t), _p == "1")))
