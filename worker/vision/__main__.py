"""`python -m worker.vision build-tiny [--out DIR]`: build the tiny test VLM, print its folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.vision", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("build-tiny", help="build the tiny random-weight Qwen2-VL; print its folder")
    tiny.add_argument("--out", type=Path, help="folder to build it in (default: the kmlx cache)")
    args = parser.parse_args(argv)
    from .tiny_vlm import build_tiny_vlm

    try:
        print(build_tiny_vlm(args.out))
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
