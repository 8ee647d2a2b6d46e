"""`python -m bench [SUITE]` (or `make bench`): kmlx's benchmarks, side by side.

    python -m bench                          serving overhead (tiny model)
    python -m bench serving --model default  the same on the real default model
    python -m bench cache                    prompt caching (real default model): reuse, parallel sharing, overhead, --kv-bits
    python -m bench pool                     1/2/3 workers; the gateway's own streaming capacity
    python -m bench vision                   images: preprocessing, latency, text beside images (tiny VLM)
    python -m bench agents                   constrained decoding vs not; grammar compile time (tiny model)
    python -m bench apis                     each API's translation cost in the gateway (chat, messages, responses, completions)
    python -m bench gguf                     GGUF types: logit error of each type's MLX form (default model)
    python -m bench gguf-load                GGUF types: load time (first conversion vs cached) and memory
    python -m bench all                      every suite
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def _serving(args: argparse.Namespace, model: Path) -> None:
    from .serving import run

    run(model, max_tokens=args.max_tokens, repeats=args.repeats)


def _cache(args: argparse.Namespace, model: Path) -> None:
    from .prompt_cache import run

    run(model, turns=args.turns, system_tokens=args.system_tokens, parallel_requests=args.parallel, internals=not args.no_internals)


def _vision(args: argparse.Namespace, model: Path) -> None:
    from .vision import run

    run(model, repeats=args.repeats)


def _pool(args: argparse.Namespace, model: Path) -> None:
    from .pool import run

    run(model, max_tokens=args.max_tokens, streams=args.streams)


def _agents(args: argparse.Namespace, model: Path) -> None:
    from .agents import run

    run(model, max_tokens=min(args.max_tokens, 128))


def _apis(args: argparse.Namespace, _model: Path) -> None:
    from .apis import run

    run()  # 32 streams x 1,000 tokens: long enough that the gateway's per-token work dominates


def _gguf(args: argparse.Namespace, model: Path) -> None:
    from .gguf_mapping import run

    run(model, types=args.types)


def _gguf_load(args: argparse.Namespace, model: Path) -> None:
    from .gguf_load import run

    run(model, types=args.types)


# suite -> (runner, the model it uses unless --model says otherwise)
SUITES: dict[str, tuple[Callable[[argparse.Namespace, Path], None], str]] = {
    "serving": (_serving, "tiny"),
    "cache": (_cache, "default"),
    "pool": (_pool, "tiny"),
    "vision": (_vision, "tiny-vlm"),
    "agents": (_agents, "tiny"),
    "apis": (_apis, "tiny"),  # a fake worker: the model is not used
    "gguf": (_gguf, "default"),
    "gguf-load": (_gguf_load, "default"),
}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", nargs="?", default="serving", choices=[*SUITES, "all"])
    p.add_argument("--model", default=None, help="tiny | default | a model folder (default: the suite's own)")
    p.add_argument("--max-tokens", type=int, default=256, help="serving: new tokens per stream")
    p.add_argument("--repeats", type=int, default=3, help="serving: runs per measurement (median)")
    p.add_argument("--streams", type=int, default=12, help="pool: concurrent streams spread over the workers")
    p.add_argument("--turns", type=int, default=10, help="cache: turns of the growing chat")
    p.add_argument("--system-tokens", type=int, default=2000, help="cache: size of the long system prompt (and of the parallel requests' shared prefix)")
    p.add_argument("--parallel", type=int, default=8, help="cache: requests sent at once with a shared prefix")
    p.add_argument("--no-internals", action="store_true", help="cache: skip the in-process part (overhead, --kv-bits)")
    p.add_argument("--types", nargs="*", default=None, help="gguf: GGUF types to measure (default: all)")
    args = p.parse_args()

    from worker.models import build_tiny_model, ensure_default_model, ensure_fast_blas

    print(f"BLAS: {ensure_fast_blas()}")  # same BLAS as the worker, for a fair baseline
    for name in SUITES if args.suite == "all" else [args.suite]:
        runner, default_model = SUITES[name]
        which = args.model or default_model
        model = {"tiny": build_tiny_model, "default": ensure_default_model, "tiny-vlm": _tiny_vlm}.get(which, lambda w=which: Path(w))()
        print(f"\n=== {name} ===")
        runner(args, Path(model))


def _tiny_vlm() -> Path:
    from worker.vision.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm()


if __name__ == "__main__":
    main()
