"""The worker's vision flags (kept here so worker/cli.py only calls in)."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import DEFAULTS
from .media import MediaLimits


def add_vision_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    v = p.add_argument_group("vision (docs/vision.md)")
    v.add_argument("--max-image-patches", type=int, default=d.max_image_patches,
                   help="images are downscaled to at most this many 32x32 patches (kamiwaza-mlx's limit)")
    v.add_argument("--video-frames", type=int, default=d.video_frames,
                   help="evenly spaced frames taken from a video; together they get one image's patch budget")
    v.add_argument("--max-source-megapixels", type=float, default=d.max_source_megapixels,
                   help="refuse to decode images or video frames larger than this (decompression bombs)")
    v.add_argument("--vision-encode-on", choices=["auto", "sliced", "media-thread", "compute-loop"], default=d.vision_encode_on,
                   help="where the vision tower runs: sliced between batch steps (Qwen2-VL), on the media thread's "
                        "own MLX stream (any model), or in one compute-loop turn; auto: sliced where supported")


def media_limits_from_args(args: argparse.Namespace) -> MediaLimits:
    return MediaLimits(
        max_image_patches=max(1, args.max_image_patches),
        video_frames=max(1, args.video_frames),
        max_source_pixels=max(1, int(args.max_source_megapixels * 1_000_000)),
    )


def vision_scheduler(loaded: Any, args: argparse.Namespace) -> Any:
    """A constructor taking the base Scheduler's arguments, for a vision model."""
    import functools

    from .scheduler import VisionScheduler

    return functools.partial(VisionScheduler, processor=loaded.processor, media=media_limits_from_args(args),
                             encode_on=args.vision_encode_on)
