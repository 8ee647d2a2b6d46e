"""The worker's loader thread: loads models beside the compute loop.

Loading a model takes seconds to minutes (reading, converting a GGUF,
dequantizing for the CPU); on the compute loop it would freeze every stream
of the models already serving. Here it runs on a thread of its own, on its
own MLX stream (`load_model` evaluates everything it returns, see
`models.loader.materialize`), one model at a time so that two loads never
hold their peak memory together. A finished load waits in `take_done()` for
the compute loop, which swaps it in; `wake` tells an idle loop to look.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kmlx.worker.loader")


@dataclass
class LoadDone:
    model_id: str
    loaded: Any = None  # models.LoadedModel
    error: str | None = None  # one line, for the user
    seconds: float = 0.0


class ModelLoader:
    def __init__(self, load: Callable[[str], Any], wake: Callable[[], None] | None = None):
        """load: model id -> LoadedModel (raises ModelLoadError)."""
        self._load = load
        self.wake: Callable[[], None] = wake or (lambda: None)
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._done: deque[LoadDone] = deque()
        self._thread: threading.Thread | None = None

    def submit(self, model_id: str) -> None:
        if self._thread is None:  # started lazily: a single-model worker never needs it
            self._thread = threading.Thread(target=self._run, name="kmlx-loader", daemon=True)
            self._thread.start()
        self._jobs.put(model_id)

    def take_done(self) -> list[LoadDone]:
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import mlx.core as mx

        from .models import ModelLoadError

        with mx.stream(mx.new_stream(mx.default_device())):
            while (model_id := self._jobs.get()) is not None:
                start = time.perf_counter()
                try:
                    done = LoadDone(model_id, loaded=self._load(model_id))
                except ModelLoadError as exc:
                    done = LoadDone(model_id, error=str(exc))
                except Exception as exc:  # a bug or an unexpected library error: say it, keep serving
                    log.exception("loading %s failed", model_id)
                    done = LoadDone(model_id, error=f"loading failed: {type(exc).__name__}: {exc}")
                done.seconds = time.perf_counter() - start
                self._done.append(done)
                self.wake()
