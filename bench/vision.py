"""Vision: preprocessing cost, end-to-end latency, text speed beside images.

1. Preprocessing a 1-MP JPEG, per stage, for the two places decoding could
   happen: the gateway's header check + the worker's full decode (what kmlx
   does) against a full decode in the gateway shipping raw pixels.
2. End-to-end latency of one 1-MP image request (tiny Qwen2-VL) through
   gateway + worker, against mlx-vlm's own ``stream_generate`` in process.
3. A text stream's decode speed alone and while 1-MP image requests keep
   arriving beside it (the media thread and chunked vision prefill exist
   so that this stays close to 1).
"""

from __future__ import annotations

import base64
import io
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .serving import median

PROMPT = "Describe this picture."


def photo_jpeg(side: int = 1000) -> bytes:
    """A photo-like 1-MP JPEG (smooth gradients plus sensor-like noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side]
    arr = np.stack([x * 255 / side, y * 255 / side, (x + y) * 127 / side], -1) + rng.normal(0, 12, (side, side, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median milliseconds of ``fn`` after one warm-up call."""
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs)


def preprocessing(jpeg: bytes, processor: Any, repeats: int) -> None:
    from PIL import Image

    from gateway.media import MediaConfig, _check_image
    from worker.vision.media import MediaLimits, load_image

    url_payload = base64.b64encode(jpeg)
    img = load_image(jpeg, MediaLimits())
    raw = img.tobytes()
    stages = {
        "base64 decode": timed(lambda: base64.b64decode(url_payload, validate=True), repeats),
        "gateway header check": timed(lambda: _check_image(jpeg, "p", MediaConfig()), repeats),
        "full decode + RGB + fit": timed(lambda: load_image(jpeg, MediaLimits()), repeats),
        "raw RGB out of PIL": timed(img.tobytes, repeats),
        "raw RGB back into PIL": timed(lambda: Image.frombytes("RGB", img.size, raw), repeats),
        "image processor (Qwen2-VL)": timed(lambda: processor.image_processor(images=[img]), repeats),
    }
    print(f"1-MP JPEG: {img.size[0]}x{img.size[1]}, {len(jpeg) / 1024:.0f} KiB; median of {repeats}\n")
    for name, ms in stages.items():
        print(f"  {name:30}{ms:9.2f} ms")
    b64, proc = stages["base64 decode"], stages["image processor (Qwen2-VL)"]
    kmlx_gw = b64 + stages["gateway header check"]
    kmlx_wk = b64 + stages["full decode + RGB + fit"] + proc
    alt_gw = b64 + stages["full decode + RGB + fit"] + stages["raw RGB out of PIL"]
    alt_wk = stages["raw RGB back into PIL"] + proc
    print(f"\n{'':34}{'gateway ms':>11}{'worker ms':>11}{'wire KiB':>10}")
    print(f"{'kmlx: check in gw, decode in wk':34}{kmlx_gw:11.2f}{kmlx_wk:11.2f}{len(url_payload) / 1024:10.0f}")
    print(f"{'alt: decode in gw, raw pixels':34}{alt_gw:11.2f}{alt_wk:11.2f}{len(raw) / 1024:10.0f}")
    print(f"{'ratio alt/kmlx':34}{alt_gw / kmlx_gw:11.1f}{alt_wk / kmlx_wk:11.2f}{len(raw) / len(url_payload):10.1f}")
    print("  (worker ms is spent on its media thread, not the compute loop)\n")


def in_process_latency(model_path: Path, jpeg: bytes, max_tokens: int, repeats: int) -> tuple[float, float]:
    from mlx_vlm import load, stream_generate
    from PIL import Image

    model, processor = load(str(model_path))
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    prompt = processor.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ttfts, totals = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        first: float | None = None
        image = Image.open(io.BytesIO(jpeg)).convert("RGB")  # decoding is part of its latency too
        # mlx-vlm annotates image as paths only, but takes PIL images too.
        for _ in stream_generate(model, processor, prompt, image=[image], max_tokens=max_tokens, temperature=0.0):  # type: ignore[arg-type, list-item]
            first = first or time.perf_counter()
        assert first is not None, "mlx-vlm generated nothing"
        if i:
            ttfts.append(first - t0)
            totals.append(time.perf_counter() - t0)
    return median(ttfts), median(totals)


def image_request(base_url: str, url: str, max_tokens: int) -> tuple[float, float]:
    """(time to first completion text, total) of one streamed image request."""
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": PROMPT}]}],
            "max_tokens": max_tokens, "temperature": 0.0, "stream": True, "ignore_eos": True}
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        times = _content_times(r)
    return times[0] - t0, time.perf_counter() - t0


def _content_times(r: httpx.Response) -> list[float]:
    """Arrival times of the SSE chunks that carry completion text."""
    times = []
    for line in r.iter_lines():
        if line.startswith("data: {"):
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                times.append(time.perf_counter())
    return times


def text_stream(base_url: str, tokens: int) -> tuple[float, float, float]:
    """One text stream: decode tok/s, and the 95th-percentile and longest
    gap between two text chunks (s)."""
    body = {"messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
            "max_tokens": tokens, "temperature": 0.0, "stream": True, "ignore_eos": True, "reset_conversation": True}
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        times = _content_times(r)
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    return (len(times) - 1) / (times[-1] - times[0]), gaps[int(0.95 * (len(gaps) - 1))], gaps[-1]


def text_beside_images(base_url: str, url: str, text_tokens: int, repeats: int) -> dict[str, tuple[float, ...]]:
    """Text stream alone, and while 1-MP image requests arrive back to back."""
    alone = [text_stream(base_url, text_tokens) for _ in range(repeats)]
    stop = threading.Event()

    def images() -> None:
        while not stop.is_set():
            image_request(base_url, url, 8)

    beside = []
    for _ in range(repeats):
        bg = threading.Thread(target=images)
        bg.start()
        time.sleep(0.3)  # let an image reach the worker first
        beside.append(text_stream(base_url, text_tokens))
        stop.set()
        bg.join()
        stop.clear()
    pick = lambda runs: tuple(median([r[i] for r in runs]) for i in range(3))  # noqa: E731
    return {"alone": pick(alone), "beside": pick(beside)}


def run(model_path: Path, *, max_tokens: int = 16, text_tokens: int = 512, repeats: int = 3) -> None:
    import mlx_vlm.models.qwen2_vl  # noqa: F401 - registers the processor class
    from mlx_vlm.utils import load_processor

    from tests.support.processes import start_stack

    jpeg = photo_jpeg()
    print(f"model: {model_path}\n")
    preprocessing(jpeg, load_processor(model_path), max(repeats, 5))
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    base_ttft, base_total = in_process_latency(model_path, jpeg, max_tokens, repeats)
    served: list[tuple[float, float]] = []
    text: dict[str, dict[str, tuple[float, ...]]] = {}
    for where in ("sliced", "media-thread", "compute-loop"):
        with tempfile.TemporaryDirectory() as logs:
            stack = start_stack(model_path, Path(logs), worker_args=["--vision-encode-on", where])
            try:
                if where == "sliced":
                    image_request(stack.base_url, url, 4)  # warm-up
                    served = [image_request(stack.base_url, url, max_tokens) for _ in range(repeats)]
                text[where] = text_beside_images(stack.base_url, url, text_tokens, repeats)
            finally:
                stack.stop()
    s_ttft, s_total = median([s[0] for s in served]), median([s[1] for s in served])
    print(f"one 1-MP image request, {max_tokens} new tokens, median of {repeats}")
    print(f"{'':28}{'mlx-vlm':>12}{'gateway+worker':>16}{'ratio':>8}")
    print(f"{'time to first token (ms)':28}{base_ttft * 1000:12.1f}{s_ttft * 1000:16.1f}{s_ttft / base_ttft:8.2f}")
    print(f"{'total (ms)':28}{base_total * 1000:12.1f}{s_total * 1000:16.1f}{s_total / base_total:8.2f}\n")
    print(f"text stream of {text_tokens} tokens, alone and beside back-to-back 1-MP image requests, median of {repeats}")
    print(f"{'':16}{'tok/s':>22}{'gap p95 ms':>22}{'gap max ms':>22}")
    print(f"{'vision tower on':16}" + f"{'alone':>8}{'beside':>8}{'ratio':>6}" * 3)
    for where, r in text.items():
        row = "".join(f"{a * k:8.1f}{b * k:8.1f}{b / a:6.2f}" for a, b, k in zip(r["alone"], r["beside"], (1, 1000, 1000)))
        print(f"{where:16}{row}")
