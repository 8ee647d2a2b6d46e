"""Pure parts of the vision path: patch budget, frame sampling, data URLs,
the gateway's local-path rule and parameter names."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest

from tests.vision.samples import image_bytes, video_bytes


def patches(w: int, h: int) -> int:
    return math.ceil(w / 32) * math.ceil(h / 32)


@pytest.mark.parametrize("size", [(64, 64), (1000, 1000), (4000, 3000), (10000, 50), (33, 33), (1, 9000)])
@pytest.mark.parametrize("budget", [1, 8, 192, 1536])
def test_fit_patches_stays_in_budget_and_keeps_aspect(size: tuple[int, int], budget: int) -> None:
    from worker.vision.media import fit_patches

    w, h = fit_patches(*size, budget)
    assert patches(w, h) <= budget or (w, h) == (1, 1)
    if patches(*size) <= budget:
        assert (w, h) == size
    else:
        assert w <= size[0] and h <= size[1]
        assert abs(w / h - size[0] / size[1]) / (size[0] / size[1]) < 0.1 or min(w, h) < 8


def test_load_image_downscales_flattens_alpha_and_orients():
    from PIL import Image

    from worker.vision.media import MediaLimits, load_image

    rgba = Image.new("RGBA", (3000, 2000), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    img = load_image(buf.getvalue(), MediaLimits(max_image_patches=96))
    assert img.mode == "RGB" and patches(*img.size) <= 96
    assert img.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (10, 20, 30)).save(buf, "JPEG", exif=exif)
    assert load_image(buf.getvalue(), MediaLimits()).size == (20, 40)


def test_load_image_refuses_bombs_and_garbage():
    from worker.vision.media import MediaError, MediaLimits, load_image

    with pytest.raises(MediaError) as e:
        load_image(image_bytes("red", size=(300, 300)), MediaLimits(max_source_pixels=1000))
    assert e.value.code == "image_too_large"
    with pytest.raises(MediaError):
        load_image(b"GIF89a but not really", MediaLimits())
    with pytest.raises(MediaError):
        jpeg = image_bytes("noise", size=(256, 256), fmt="JPEG")
        load_image(jpeg[: len(jpeg) // 2], MediaLimits())


def _bar_positions(frames) -> list[int]:
    return [int(np.argmax(np.asarray(f)[:, :, 0].mean(0) > 128)) for f in frames]


def test_video_frames_are_evenly_spaced_and_in_order():
    from worker.vision.media import MediaLimits, load_video_frames

    frames = load_video_frames(video_bytes(frames=48, size=(160, 64)), MediaLimits(video_frames=8))
    assert len(frames) == 8
    xs = _bar_positions(frames)
    assert xs == sorted(xs) and len(set(xs)) == 8
    steps = np.diff(xs)
    assert steps.max() - steps.min() <= 4  # evenly spaced


def test_short_video_gives_each_frame_once():
    from worker.vision.media import MediaLimits, load_video_frames

    frames = load_video_frames(video_bytes(frames=3), MediaLimits(video_frames=8))
    assert len(frames) == 3 and len(set(_bar_positions(frames))) == 3


def test_video_frames_share_one_image_budget():
    from worker.vision.media import MediaLimits, load_video_frames

    limits = MediaLimits(max_image_patches=64, video_frames=4)
    frames = load_video_frames(video_bytes(frames=8, size=(640, 480)), limits)
    assert sum(patches(*f.size) for f in frames) <= 64


def test_data_url_bytes():
    from worker.vision.media import MediaError, data_url_bytes

    assert data_url_bytes("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"
    assert data_url_bytes("data:text/plain,a%20b") == b"a b"
    for bad in ("data:image/png;base64,@@", "http://x/y.png", "data:nocomma"):
        with pytest.raises(MediaError):
            data_url_bytes(bad)


def test_local_paths_only_inside_allowed_dirs(tmp_path):
    from gateway.errors import APIError
    from gateway.media import MediaConfig, _read_local

    allowed = tmp_path / "ok"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"s")
    (allowed / "link").symlink_to(tmp_path / "secret")
    config = MediaConfig(allow_local_dirs=[allowed.resolve()])
    assert _read_local(str(allowed / "a.png"), "p", config, 0) == b"x"
    assert _read_local((allowed / "a.png").as_uri(), "p", config, 0) == b"x"
    for ref in (str(tmp_path / "secret"), str(allowed / "link"), f"{allowed}/../secret"):
        with pytest.raises(APIError) as e:
            _read_local(ref, "p", config, 0)
        assert e.value.code == "local_media_forbidden"
    with pytest.raises(APIError) as e:
        _read_local(str(allowed / "a.png"), "p", MediaConfig(), 0)
    assert e.value.status == 400
    with pytest.raises(APIError) as e:
        _read_local("a.png", "p", config, 0)  # relative: never
    assert e.value.code == "invalid_image_url"


def test_top_level_images_keep_their_names():
    from gateway.compat import top_level_image_names
    from gateway.media import media_params
    from gateway.schemas import ChatCompletionRequest

    body = ChatCompletionRequest.model_validate({
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                  {"type": "image_url", "image_url": {"url": "data:,x"}}]}],
        "images": ["data:,y", "data:,z"],
    })
    names = top_level_image_names(body)
    assert media_params(body.wire_messages(), names) == ["messages[0].content[1]", "images[0]", "images[1]"]
