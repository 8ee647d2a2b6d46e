"""Compare in-memory weight forms on the MLX CPU backend: Q4 vs float32 vs bfloat16.

    python bench/cpu_weights.py                   # default model, 256-token prompt, 32 new tokens
    python bench/cpu_weights.py --prompt-tokens 1000 --new-tokens 128 --repeats 3   # docs/models.md numbers

Each configuration runs in its own process, because the BLAS library has to be
chosen before MLX is loaded: "float32 / OpenBLAS" preloads OpenBLAS (see
worker/models/blas.py), "float32 / bundled" forces the reference BLAS that
ships in the mlx-cpu wheel. Prints one row per configuration, then ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

# (label, weights choice, use a fast BLAS?)
CONFIGS = [
    ("q4", "native", True),
    ("float32 / OpenBLAS", "float32", True),
    ("float32 / bundled BLAS", "float32", False),
    ("bfloat16", "bfloat16", True),
]
TEXT = (
    "The history of cartography is the story of how people have described the world around them. "
    "Early maps were drawn on clay tablets, later on papyrus and parchment, and they mixed careful "
    "observation with myth. Ptolemy's Geography collected coordinates for thousands of places; "
    "medieval portolan charts guided sailors from harbour to harbour with compass lines. "
)


def measure(model_spec: str | None, weights: str, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    """Runs inside the child process."""
    from worker.models import ensure_fast_blas

    blas = ensure_fast_blas(reexec=False)  # called before MLX is imported: no re-exec needed
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    from worker.models import load_model

    start = time.perf_counter()
    loaded = load_model(model_spec, weights=weights)
    load_s = time.perf_counter() - start
    ids = loaded.tokenizer.encode(TEXT * (prompt_tokens // 40 + 2), add_special_tokens=False)[:prompt_tokens]

    def run(prompt: list[int], n: int) -> tuple[float, float]:
        t0 = first = time.perf_counter()
        for i, _ in zip(range(n), generate_step(mx.array(prompt), loaded.model, max_tokens=n)):
            if i == 0:
                first = time.perf_counter()
        end = time.perf_counter()
        return len(prompt) / (first - t0), (n - 1) / (end - first)

    run(ids[:16], 4)  # warm-up: first-call costs are not throughput
    results = [run(ids, new_tokens) for _ in range(repeats)]
    return {
        "weights": loaded.weights,
        "blas": blas,
        "load_s": load_s,
        "prefill_tps": statistics.median(r[0] for r in results),
        "decode_tps": statistics.median(r[1] for r in results),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (default: the built-in SmolLM2)")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the median is shown")
    parser.add_argument("--only", nargs="*", help="labels to run (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.child, args.prompt_tokens, args.new_tokens, args.repeats)))
        return 0

    from worker.models.blas import find_fast_blas

    have_fast = sys.platform == "linux" and find_fast_blas() is not None
    print(f"model: {args.model or 'default (SmolLM2-135M-Instruct)'}, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, median of {args.repeats}, {os.cpu_count()} CPUs")
    rows = {}
    for label, weights, fast in CONFIGS:
        if args.only and label not in args.only:
            continue
        if fast and label.endswith("OpenBLAS") and not have_fast:
            print(f"{label:24} skipped: no OpenBLAS found (apt-get install libopenblas0-pthread)")
            continue
        env = dict(os.environ, KMLX_BLAS=os.environ.get("KMLX_BLAS", "") if fast else "none")
        env.pop("LD_PRELOAD", None)
        cmd = [sys.executable, __file__, "--child", weights, "--prompt-tokens", str(args.prompt_tokens),
               "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
        if args.model:
            cmd += ["--model", args.model]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if done.returncode != 0:
            print(f"{label:24} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        rows[label] = row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{label:24} prefill {row['prefill_tps']:8.1f} tok/s   decode {row['decode_tps']:6.1f} tok/s   "
              f"load {row['load_s']:4.1f} s   peak RSS {row['peak_rss_gb']:.2f} GB   [{row['weights']}; {row['blas']}]",
              flush=True)
    base = rows.get("q4")
    if base:
        print("ratios vs q4:")
        for label, row in rows.items():
            if label != "q4":
                print(f"  {label:22} prefill x{row['prefill_tps'] / base['prefill_tps']:.2f}   "
                      f"decode x{row['decode_tps'] / base['decode_tps']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
