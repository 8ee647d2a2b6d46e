"""The worker's media thread: decode and process images and video.

Per 1-MP image on the 2-core CPU: decoding ~9 ms, the Qwen2-VL processor
~100-280 ms. On the compute loop that would stall every running text
stream for as long; here PIL, PyAV and numpy do it beside the loop (they
release the GIL). With ``--vision-encode-on media-thread`` the vision
tower runs here too. Jobs run on this thread's own MLX stream, and since
MLX ties unevaluated arrays to the thread that made them, they evaluate
everything they return. When a job is done the thread calls ``wake``, so a
compute loop idling on its inbox picks it up at once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("kmlx.worker.vision")


@dataclass
class Done:
    request_id: str
    result: Any = None
    error: BaseException | None = None


class MediaThread:
    def __init__(self, wake: Callable[[], None] | None = None):
        self.wake: Callable[[], None] = wake or (lambda: None)
        self._jobs: "queue.Queue[tuple[str, Callable[[], Any]] | None]" = queue.Queue()
        self._done: deque[Done] = deque()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, request_id: str, job: Callable[[], Any]) -> None:
        """Queue a job. The queue is bounded by the scheduler's admission
        limit (--max-queued), which counts jobs in here."""
        if self._thread is None:  # started lazily: no thread for text-only traffic
            self._thread = threading.Thread(target=self._run, name="kmlx-media", daemon=True)
            self._thread.start()
        self._jobs.put((request_id, job))

    def cancel(self, request_id: str) -> None:
        """Skip this job if it has not started; drop its result if it has."""
        with self._lock:
            self._cancelled.add(request_id)

    def take_done(self) -> list[Done]:
        out: list[Done] = []
        while self._done:
            d = self._done.popleft()
            with self._lock:
                if d.request_id in self._cancelled:
                    self._cancelled.discard(d.request_id)
                    continue
            out.append(d)
        return out

    @property
    def has_done(self) -> bool:
        return bool(self._done)

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import mlx.core as mx

        with mx.stream(mx.new_stream(mx.default_device())):
            self._loop()

    def _loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            request_id, job = item
            with self._lock:
                if request_id in self._cancelled:
                    self._cancelled.discard(request_id)
                    continue
            try:
                done = Done(request_id, result=job())
            except Exception as exc:  # reported to the request, never kills the thread
                done = Done(request_id, error=exc)
            self._done.append(done)
            try:
                self.wake()
            except Exception:  # pragma: no cover - waking is best effort
                log.exception("could not wake the compute loop")
