"""`python -m bench` (or `make bench`): kmlx's benchmarks, side by side.

    python -m bench                 serving overhead on the tiny model
    python -m bench --model default the same on the real default model
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", nargs="?", default="serving", choices=["serving"])
    p.add_argument("--model", default="tiny", help="tiny | default | a model folder")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from worker.models import build_tiny_model, ensure_default_model, ensure_fast_blas

    print(f"BLAS: {ensure_fast_blas()}")  # same BLAS as the worker, for a fair baseline
    model = {"tiny": build_tiny_model, "default": ensure_default_model}.get(args.model, lambda: Path(args.model))()
    if args.suite == "serving":
        from .serving import run

        run(Path(model), max_tokens=args.max_tokens, repeats=args.repeats)


if __name__ == "__main__":
    main()
