"""A thread beside the compute loop for work whose size a client controls.

The compute loop must never block on such work: while it runs, every
stream in the batch stops. Two of these exist: the prompt thread (chat
templates and tokenization, ``worker/prompt_jobs.py``) and a vision
worker's media thread (decoding and the image processor; see
``MediaThread``). Jobs are queued with ``submit``; when one is done the
thread calls ``wake``, so a compute loop idling on its inbox picks the
result up at once with ``take_done``. A job's exception is its result,
never the thread's end.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kmlx.worker.jobs")


@dataclass
class Done:
    request_id: str
    result: Any = None
    error: BaseException | None = None


class JobThread:
    def __init__(self, name: str, wake: Callable[[], None] | None = None):
        self.name = name
        self.wake: Callable[[], None] = wake or (lambda: None)
        self._jobs: queue.Queue[tuple[str, Callable[[], Any]] | None] = queue.Queue()
        self._done: deque[Done] = deque()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, request_id: str, job: Callable[[], Any]) -> None:
        """Queue a job. The queue is bounded by the scheduler's admission
        limit (--max-queued), which counts jobs in here."""
        if self._thread is None:  # started lazily: no thread for text-only traffic
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
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

