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
    python -m bench backends                 kmlx vs mlx_lm.server vs mlx-lm in-process, on this backend
    python -m bench backends --model random-1b   the same on a random 1B llama (a GPU; docs/benchmarks.md)
    python -m bench steps                    one decode step's cost at 1/8/64 sequences: mlx-lm vs kmlx (--profile)
    python -m bench distributed              1 process vs 2 mlx.distributed ranks on loopback (tiny model; --model default)
    python -m bench all                      every suite
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def _serving(args: argparse.Namespace, model: Path) -> None:
    from .serving import run

    run(model, max_tokens=args.max_tokens or 256, repeats=args.repeats or 3)


def _cache(args: argparse.Namespace, model: Path) -> None:
    from .prompt_cache import run

    run(model, turns=args.turns, system_tokens=args.system_tokens, parallel_requests=args.parallel, internals=not args.no_internals)


def _vision(args: argparse.Namespace, model: Path) -> None:
    from .vision import run

    run(model, repeats=args.repeats or 3)


def _pool(args: argparse.Namespace, model: Path) -> None:
    from .pool import run

    run(model, max_tokens=args.max_tokens or 256, streams=args.streams)


def _distributed(args: argparse.Namespace, model: Path) -> None:
    from .distributed import run

    run(model, max_tokens=min(args.max_tokens or 64, 64), streams=min(args.streams, 4))


def _agents(args: argparse.Namespace, model: Path) -> None:
    from .agents import run

    run(model, max_tokens=min(args.max_tokens or 256, 128))


def _steps(args: argparse.Namespace, model: Path) -> None:
    from .steps import run

    run(model, sizes=tuple(int(s) for s in (args.backend_streams or "1,8,64").split(",")), temperature=args.temperature,
        profile=args.profile)


def _backends(args: argparse.Namespace, model: Path) -> None:
    from .backends import run

    run(model, args)


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
    "backends": (_backends, "tiny"),
    "steps": (_steps, "tiny"),
    "distributed": (_distributed, "tiny"),
}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", nargs="?", default="serving", choices=[*SUITES, "all"])
    p.add_argument("--model", default=None, help="tiny | default | a model folder (default: the suite's own)")
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per stream (default: 256; backends: 32 on a CPU, 128 on a GPU)")
    p.add_argument("--repeats", type=int, default=None, help="serving, vision, backends: runs per measurement (median; default 3)")
    p.add_argument("--streams", type=int, default=12, help="pool: concurrent streams spread over the workers")
    p.add_argument("--turns", type=int, default=10, help="cache: turns of the growing chat")
    p.add_argument("--system-tokens", type=int, default=2000, help="cache: size of the long system prompt (and of the parallel requests' shared prefix)")
    p.add_argument("--parallel", type=int, default=8, help="cache: requests sent at once with a shared prefix")
    p.add_argument("--no-internals", action="store_true", help="cache: skip the in-process part (overhead, --kv-bits)")
    p.add_argument("--types", nargs="*", default=None, help="gguf: GGUF types to measure (default: all)")
    b = p.add_argument_group("backends")
    b.add_argument("--backend-streams", default=None, help="concurrent stream counts (default: 1,8,32,64)")
    b.add_argument("--prefill-prompts", type=int, default=None, help="prompts prefilled together (default 4; 0: no prefill row)")
    b.add_argument("--prefill-tokens", type=int, default=None, help="tokens per prefill prompt (default: 1024 on a CPU, 4096 on a GPU)")
    b.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of every request (0: greedy)")
    b.add_argument("--contenders", default=None, help="comma-separated subset of kmlx,mlx_lm.server,in-process")
    b.add_argument("--kmlx-args", default=None, help="extra kmlx-worker flags, e.g. '--prefill-chunk 2048'")
    b.add_argument("--profile", action="store_true", help="steps: print where the compute thread's time goes (cProfile)")
    b.add_argument("--tokenizer-from", default=None, help="random-1b: folder with tokenizer.json (default: the tiny model's)")
    args = p.parse_args()

    from worker.models import build_tiny_model, ensure_default_model, ensure_fast_blas

    print(f"BLAS: {ensure_fast_blas()}")  # same BLAS as the worker, for a fair baseline
    for name in SUITES if args.suite == "all" else [args.suite]:
        runner, default_model = SUITES[name]
        which = args.model or default_model
        named = {"tiny": build_tiny_model, "default": ensure_default_model, "tiny-vlm": _tiny_vlm,
                 "random-1b": lambda: _random_model("random-1b", args.tokenizer_from)}
        model = named[which]() if which in named else Path(which)
        print(f"\n=== {name} ===")
        runner(args, Path(model))


def _random_model(name: str, tokenizer_from: str | None) -> Path:
    from .random_model import build_random_model

    return build_random_model(name, Path(tokenizer_from) if tokenizer_from else None)


def _tiny_vlm() -> Path:
    from worker.vision.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm()


if __name__ == "__main__":
    main()
