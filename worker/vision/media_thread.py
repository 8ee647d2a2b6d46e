"""The worker's media thread: decode and process images and video."""

from __future__ import annotations

from collections.abc import Callable

from ..job_thread import JobThread


class MediaThread(JobThread):
    """A vision worker's media thread: decode and process images and video.

    Per 1-MP image on the 2-core CPU: decoding ~9 ms, the Qwen2-VL processor
    ~100-280 ms; here PIL, PyAV and numpy do it beside the loop (they release
    the GIL). With ``--vision-encode-on media-thread`` the vision tower runs
    here too. Jobs run on this thread's own MLX stream, and since MLX ties
    unevaluated arrays to the thread that made them, they evaluate
    everything they return."""

    def __init__(self, wake: Callable[[], None] | None = None):
        super().__init__("kmlx-media", wake)

    def _run(self) -> None:
        import mlx.core as mx

        with mx.stream(mx.new_stream(mx.default_device())):
            self._loop()
