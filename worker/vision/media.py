"""Media bytes -> RGB images the processor can take (worker side, no MLX).

The gateway has already fetched every URL and checked the header (format,
size); what arrives here is a base64 ``data:`` URL. This module does the
expensive part — full decode, RGB conversion, downscaling, video frame
extraction — on the media thread, never on the compute loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import Any

from ..config import DEFAULTS

PATCH = 32  # kamiwaza-mlx's unit: images are limited to N patches of 32x32 pixels


class MediaError(ValueError):
    """A media part the worker cannot use; the message goes to the client (400)."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_image"):
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class MediaLimits:
    max_image_patches: int = DEFAULTS.max_image_patches  # per image, in 32x32 patches
    video_frames: int = DEFAULTS.video_frames  # evenly spaced frames taken from a video
    max_source_pixels: int = int(DEFAULTS.max_source_megapixels * 1_000_000)  # decompression bombs

    @property
    def frame_patches(self) -> int:
        """A whole video costs at most what one image may cost."""
        return max(1, self.max_image_patches // max(1, self.video_frames))


def data_url_bytes(url: str, *, param: str | None = None) -> bytes:
    head, sep, payload = url.partition(",")
    if not url.startswith("data:") or not sep:
        raise MediaError("media must arrive as a data: URL", param=param, code="invalid_image_url")
    try:
        if head.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        from urllib.parse import unquote_to_bytes

        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise MediaError("the data URL is not valid base64", param=param, code="invalid_image_url") from None


def fit_patches(width: int, height: int, max_patches: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio that covers at most
    ``max_patches`` patches of 32x32 (unchanged when it already fits)."""
    def patches(w: int, h: int) -> int:
        return math.ceil(w / PATCH) * math.ceil(h / PATCH)

    if patches(width, height) <= max_patches:
        return width, height
    scale = math.sqrt(max_patches * PATCH * PATCH / (width * height))
    while True:
        w, h = max(1, int(width * scale)), max(1, int(height * scale))
        if patches(w, h) <= max_patches:
            return w, h
        scale *= 0.98


def load_image(data: bytes, limits: MediaLimits, *, param: str | None = None, max_patches: int | None = None) -> Any:
    """Decode, apply EXIF orientation, flatten alpha onto white, convert to
    RGB and downscale to the patch budget."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    budget = max_patches or limits.max_image_patches
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > limits.max_source_pixels:
            raise MediaError(
                f"image is {w}x{h} pixels; the limit is {limits.max_source_pixels} pixels",
                param=param, code="image_too_large",
            )
        target = fit_patches(w, h, budget)
        if img.format == "JPEG" and target != (w, h):
            img.draft("RGB", target)  # let libjpeg decode at a reduced scale: much faster
        img.load()
        img = ImageOps.exif_transpose(img) or img
        img = _rgb(img)
        target = fit_patches(img.width, img.height, budget)
        if target != img.size:
            img = img.resize(target, Image.Resampling.BICUBIC)
        return img
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError("the data is not an image format this server can read", param=param) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MediaError(f"the image could not be decoded: {exc}", param=param) from None


def _rgb(img: Any) -> Any:
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB") if img.mode != "RGB" else img


def load_video_frames(data: bytes, limits: MediaLimits, *, param: str | None = None) -> list[Any]:
    """``limits.video_frames`` evenly spaced frames (fewer if the clip has
    fewer), each downscaled so the whole video fits one image's budget."""
    import av
    from PIL import Image

    n = max(1, limits.video_frames)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaError("the video has no video stream", param=param, code="invalid_video")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            w, h = stream.codec_context.width, stream.codec_context.height
            if w * h > limits.max_source_pixels:
                raise MediaError(f"video frames are {w}x{h}; the limit is {limits.max_source_pixels} pixels",
                                 param=param, code="video_too_large")
            frames = _sample_frames(container, stream, n)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaError(f"the video could not be decoded: {exc}", param=param, code="invalid_video") from None
    if not frames:
        raise MediaError("the video has no decodable frames", param=param, code="invalid_video")
    out = []
    for frame in frames:
        img = frame.to_image()  # RGB
        target = fit_patches(img.width, img.height, limits.frame_patches)
        out.append(img.resize(target, Image.Resampling.BICUBIC) if target != img.size else img)
    return out


def _sample_frames(container: Any, stream: Any, n: int) -> list[Any]:
    """One pass over the decoded frames, keeping the first frame at or after
    each of ``n`` evenly spaced times (frame indices when there is no
    duration). Only the kept frames stay in memory."""
    tb = float(stream.time_base) if stream.time_base else 0.0
    start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    if stream.duration and tb:
        duration = float(stream.duration * tb)
    elif container.duration:
        duration = container.duration / 1_000_000
    else:
        duration = 0.0
    if duration <= 0:
        return _sample_by_index(container, stream, n)
    targets = [start + duration * (i + 0.5) / n for i in range(n)]
    picked: list[Any] = []

    def take(frame: Any) -> None:
        if not picked or picked[-1] is not frame:  # a frame covering several targets counts once
            picked.append(frame)

    k = 0  # next target
    shown = None  # the frame on screen before the current one
    for frame in container.decode(stream):
        t = frame.time if frame.time is not None else 0.0
        while k < n and t > targets[k]:
            take(shown if shown is not None else frame)  # the frame on screen at targets[k]
            k += 1
        if k >= n:
            break
        shown = frame
    if k < n and shown is not None:
        take(shown)  # the stream ended: its last frame covers the remaining targets
    return picked


def _sample_by_index(container: Any, stream: Any, n: int) -> list[Any]:
    frames = list(container.decode(stream))  # no duration: short streams only in practice
    if len(frames) <= n:
        return frames
    return [frames[int((i + 0.5) * len(frames) / n)] for i in range(n)]
