"""Fixtures for the vision tests: the tiny VLM, a stack serving it, media."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.e2e import starts_processes
from tests.support.processes import Stack, start_stack
from tests.vision.samples import MediaServer, image_bytes, video_bytes

# Small enough that the "oversized image" test needs no big upload.
MAX_IMAGE_MB = 0.25
FETCH_TIMEOUT = 1.0


@pytest.fixture(scope="session")
def tiny_vlm_path() -> Path:
    """A tiny random-weight Qwen2-VL (built offline, cached)."""
    from worker.vision.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "green.png").write_bytes(image_bytes("green"))
    (root / "outside.png").write_bytes(image_bytes("red"))
    (allowed / "escape.png").symlink_to(root / "outside.png")  # a link out of the allowed folder
    return root


@pytest.fixture(scope="session")
def media_server() -> Iterator[MediaServer]:
    files = {
        "/noise.png": (image_bytes("noise", seed=3), "image/png"),
        "/clip.mp4": (video_bytes(), "video/mp4"),
    }
    with MediaServer(files) as server:
        yield server


@pytest.fixture(scope="session")
@starts_processes
def vision_stack(tiny_vlm_path: Path, media_dir: Path, log_dir: Path) -> Iterator[Stack]:
    stack = start_stack(
        tiny_vlm_path,
        log_dir,
        gateway_args=[
            "--allow-local-media", str(media_dir / "allowed"),
            "--media-fetch-timeout", str(FETCH_TIMEOUT),
            "--max-image-mb", str(MAX_IMAGE_MB),
            "--allow-private-media-urls",  # the test's media server is on loopback
        ],
    )
    yield stack
    stack.stop()
