"""Media the vision tests send: images and clips made here, and a loopback
HTTP server that serves them (and one URL that never answers)."""

from __future__ import annotations

import base64
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def image_bytes(kind: str = "noise", size: tuple[int, int] = (64, 64), fmt: str = "PNG", seed: int = 0) -> bytes:
    from PIL import Image

    w, h = size
    if kind == "noise":
        arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr)
    else:
        img = Image.new("RGB", size, {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 160, 0)}[kind])
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def huge_pixel_png(side: int = 9000) -> bytes:
    """A tiny file that claims side x side pixels (1-bit, one colour)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def video_bytes(frames: int = 24, size: tuple[int, int] = (96, 64), fps: int = 12, moving: str = "red") -> bytes:
    """An H.264 MP4 clip: a vertical bar moving left to right."""
    import av

    w, h = size
    colour = {"red": (255, 0, 0), "blue": (0, 0, 255)}[moving]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            arr = np.zeros((h, w, 3), np.uint8)
            x = i * (w - 8) // max(1, frames - 1)
            arr[:, x : x + 8] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


class MediaServer:
    """Serves ``files`` on 127.0.0.1; ``/slow`` sleeps instead of answering."""

    def __init__(self, files: dict[str, tuple[bytes, str]]):
        self.files = files
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/slow":
                    time.sleep(30)
                    return
                item = server.files.get(self.path)
                if item is None:
                    self.send_error(404)
                    return
                body, mime = item
                self.send_response(200)
                self.send_header("Content-Type", mime)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> MediaServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

