"""Which models this worker serves, which of them are in memory, and their schedulers.

A worker started with `-m` hosts that one model, loaded before it serves and
never unloaded. With `--models-dir` it hosts every model in the folder
(`model_catalog`) and loads them on demand: the first request for a model
waits while the loader thread (`model_loader`) loads it and the other models
keep decoding; the compute loop then swaps it in with a scheduler of its own.
To make room, the least recently used idle model is unloaded first
(`--max-loaded-models`, `--max-loaded-gb`); one idle for
`--idle-unload-seconds` goes too. A request waits at most `--model-load-timeout`
seconds for its model, then gets a 503 with `code=model_loading` (the load
goes on). Every change is announced to the gateways (`ModelsChanged`).

Runs on the compute thread only, like the schedulers it owns.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from protocol.messages import ChatRequest, ErrorInfo, ModelInfo, RequestOutput, Usage

from .kv.manager import ControlError
from .model_catalog import CatalogEntry
from .model_loader import LoadDone, ModelLoader
from .sequence import rejection

log = logging.getLogger("kmlx.worker.models")


@dataclass(frozen=True)
class ResidencyLimits:
    max_models: int = 0  # loaded at once; 0: no limit
    max_bytes: int = 0  # their weights in memory together; 0: no limit
    idle_unload_seconds: float = 0.0  # 0: never
    load_timeout: float = 300.0  # how long a request waits for its model


@dataclass
class Hosted:
    """One model this worker can serve, in memory or not."""

    model_id: str
    size_bytes: int  # in memory once loaded; until then the weights on disk (an estimate)
    pinned: bool = False  # the -m model: loaded at start, never unloaded
    state: str = "unloaded"  # unloaded | loading | loaded | failed
    scheduler: Any = None
    context_length: int = 0
    capabilities: list[str] = field(default_factory=list)
    tokenizer_hash: str = ""
    error: str | None = None
    last_used: float = 0.0
    # Requests that arrived before the model was in memory: (gateway, request, arrival).
    waiting: list[tuple[bytes, ChatRequest, float]] = field(default_factory=list)
    load_calls: list[Callable[[ModelInfo | ErrorInfo], None]] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        """Requests in flight: waiting for it, or in its scheduler (rendering included)."""
        s = self.scheduler
        return bool(self.waiting) or (s is not None and (s.has_work or s.running > 0 or s.waiting > 0))

    def info(self) -> ModelInfo:
        return ModelInfo(
            id=self.model_id, state=self.state, context_length=self.context_length,  # type: ignore[arg-type]
            capabilities=list(self.capabilities), size_bytes=self.size_bytes, error=self.error,
        )


class ModelHost:
    def __init__(
        self,
        *,
        build: Callable[[Any], Any],
        limits: ResidencyLimits = ResidencyLimits(),
        loader: ModelLoader | None = None,
        catalog: Callable[[], dict[str, CatalogEntry]] | None = None,
        on_change: Callable[[list[ModelInfo]], None] = lambda _models: None,
    ):
        """build: LoadedModel -> (Scheduler, tokenizer hash), on this thread.
        catalog: rescans the models dir (None for a single-model worker)."""
        self.build = build
        self.limits = limits
        self.loader = loader
        self.catalog = catalog
        self.on_change = on_change
        self.models: dict[str, Hosted] = {}
        self.default: str | None = None  # for requests that name no model
        self._where: dict[str, str] = {}  # open request id -> model id
        self._known_ids: dict[str, CatalogEntry] = {}
        if catalog is not None:
            self.refresh()

    # ------------------------------------------------------------------ #
    # start-up

    def add_loaded(self, loaded: Any, *, pinned: bool) -> Hosted:
        """A model loaded before serving (`-m`)."""
        hosted = self.models.setdefault(loaded.model_id, Hosted(loaded.model_id, 0))
        hosted.pinned = pinned
        self._install(hosted, loaded)
        self.default = self.default or loaded.model_id
        return hosted

    def refresh(self) -> bool:
        """Rescan the models dir; True when the set of models changed."""
        if self.catalog is None:
            return False
        entries = self.catalog()
        changed = set(entries) != set(self._known_ids)
        self._known_ids = entries
        for model_id, entry in entries.items():
            if model_id not in self.models:
                self.models[model_id] = Hosted(model_id, entry.size_bytes)
        for model_id in [m for m in self.models if m not in entries]:
            hosted = self.models[model_id]
            if hosted.state == "unloaded" or hosted.state == "failed":
                del self.models[model_id]  # gone from disk; a loaded copy serves on until unloaded
        return changed

    def spec(self, model_id: str) -> str:
        """What `load_model` is given for a model of the dir."""
        return str(self._known_ids[model_id].path)

    # ------------------------------------------------------------------ #
    # the engine's view

    @property
    def has_work(self) -> bool:
        return any(h.scheduler is not None and h.scheduler.has_work for h in self.models.values())

    @property
    def idle(self) -> bool:
        """No request anywhere: nothing to step, render or wait for."""
        return not any(h.busy for h in self.models.values())

    @property
    def loaded(self) -> list[Hosted]:
        return [h for h in self.models.values() if h.state == "loaded"]

    def infos(self) -> list[ModelInfo]:
        return [h.info() for h in self.models.values()]

    def admit(self, gateway: bytes, req: ChatRequest, now: float) -> RequestOutput | None:
        """The request's first output, or None when it waits (for its model, or
        a vision request's media)."""
        hosted = self._find(req.model)
        if hosted is None:
            return rejection(req.request_id, self._not_served(req.model))
        hosted.last_used = now
        self._where[req.request_id] = hosted.model_id
        if hosted.state == "loaded":
            return self._seen(hosted.scheduler.admit(gateway, req))
        hosted.waiting.append((gateway, req, now))
        self._want(hosted)
        return None

    def step(self) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        for hosted in self.loaded:
            if not hosted.scheduler.has_work:
                continue
            try:
                outputs += hosted.scheduler.step()
            except Exception as exc:  # one model's failure ends its own requests only
                log.exception("compute step of %s failed", hosted.model_id)
                err = ErrorInfo(f"the worker failed while generating: {exc}", type="server_error",
                                code="worker_error", status=500)
                outputs += [o for rid in self._requests_of(hosted) if (o := hosted.scheduler.abort(rid, error=err))]
            hosted.last_used = time.monotonic()
        return self._seen_all(outputs)

    def abort(self, request_id: str, *, error: ErrorInfo | None = None) -> RequestOutput | None:
        hosted = self.models.get(self._where.get(request_id, ""))
        if hosted is None:
            return None
        for i, (_, req, _) in enumerate(hosted.waiting):
            if req.request_id == request_id:
                del hosted.waiting[i]
                del self._where[request_id]
                return RequestOutput(request_id, finish_reason="error" if error else "abort", error=error, usage=Usage())
        if hosted.scheduler is None:
            return None
        return self._seen(hosted.scheduler.abort(request_id, error=error))

    def sequences_of(self, gateway: bytes) -> list[str]:
        out = [req.request_id for h in self.models.values() for g, req, _ in h.waiting if g == gateway]
        return out + [rid for h in self.loaded for rid in h.scheduler.sequences_of(gateway)]

    def expired(self, now: float) -> list[str]:
        out = [req.request_id for h in self.models.values() for _, req, _ in h.waiting if req.deadline and req.deadline < now]
        return out + [rid for h in self.loaded for rid in h.scheduler.expired(now)]

    def open_requests(self) -> list[str]:
        return list(self._where)

    def scheduler_for(self, model_id: str | None) -> Any:
        """A loaded model's scheduler, for control calls (tokenize, conversations)."""
        hosted = self._find(model_id)
        if hosted is None:
            raise LookupError(self._not_served(model_id).message)
        if hosted.state != "loaded":
            self._want(hosted)
            raise ControlError(f"model {hosted.model_id} is not loaded yet; it is loading now, retry shortly",
                               code="model_loading", status=503)
        return hosted.scheduler

    def counters(self) -> tuple[int, int, int, int]:
        """(running, waiting, kv tokens, steps) over every model."""
        waiting_for_load = sum(len(h.waiting) for h in self.models.values())
        s = [h.scheduler for h in self.loaded]
        return (sum(x.running for x in s), sum(x.waiting for x in s) + waiting_for_load,
                sum(x.kv_tokens() for x in s), sum(x.counters.steps for x in s))

    # ------------------------------------------------------------------ #
    # loading and unloading

    def request_load(self, model_id: str, reply: Callable[[ModelInfo | ErrorInfo], None]) -> None:
        """POST /v1/models/{id}/load: `reply` is called once it is loaded (or failed)."""
        hosted = self._find(model_id)
        if hosted is None:
            raise LookupError(self._not_served(model_id).message)
        if hosted.state == "loaded":
            hosted.last_used = time.monotonic()
            reply(hosted.info())
            return
        hosted.load_calls.append(reply)
        self._want(hosted)

    def unload(self, model_id: str) -> ModelInfo:
        """POST /v1/models/{id}/unload. A model with requests in flight is refused (409)."""
        hosted = self._find(model_id)
        if hosted is None:
            raise LookupError(self._not_served(model_id).message)
        if hosted.pinned:
            raise ControlError(f"model {model_id} is this worker's -m model; it cannot be unloaded", code="pinned",
                               status=409)
        if hosted.busy:
            raise ControlError(f"model {model_id} has requests in flight; unload it when they are done",
                               code="model_busy", status=409)
        if hosted.state == "loaded":
            self._unload(hosted, "on request")
        return hosted.info()

    def poll(self, now: float) -> list[RequestOutput]:
        """Called every turn of the compute loop: swap in finished loads, time out
        waiting requests, unload idle models, start loads there is room for."""
        outputs: list[RequestOutput] = []
        if self.loader is not None:
            for done in self.loader.take_done():
                outputs += self._finish_load(done, now)
        for hosted in self.models.values():
            outputs += self._time_out(hosted, now)
        if self.limits.idle_unload_seconds:
            for hosted in self.loaded:
                if not hosted.pinned and not hosted.busy and now - hosted.last_used > self.limits.idle_unload_seconds:
                    self._unload(hosted, f"idle for {now - hosted.last_used:.0f} s")
        self._start_loads()
        return self._seen_all(outputs)

    def close(self) -> None:
        """Shutdown: save every loaded model's conversations for the next start."""
        for hosted in self.loaded:
            kv = getattr(hosted.scheduler, "kv", None)
            if kv is not None:
                saved = kv.save_all()
                log.info("%s: saved %d conversation cache(s) for the next start", hosted.model_id, saved)
        if self.loader is not None:
            self.loader.close()

    def _want(self, hosted: Hosted) -> None:
        if hosted.state in ("unloaded", "failed"):
            hosted.state, hosted.error = "unloaded", None
            self._start_loads()

    def _start_loads(self) -> None:
        if self.loader is None:
            return
        for hosted in self.models.values():
            if hosted.state != "unloaded" or not (hosted.waiting or hosted.load_calls):
                continue
            if self.limits.max_bytes and hosted.size_bytes > self.limits.max_bytes:
                self._fail(hosted, f"model {hosted.model_id} needs about {hosted.size_bytes / 2**30:.1f} GiB, more "
                           f"than --max-loaded-gb allows ({self.limits.max_bytes / 2**30:.1f} GiB)", code="model_too_large")
                continue
            if not self._make_room(hosted.size_bytes, keep=hosted):
                continue  # every loaded model is busy: it waits (within --model-load-timeout)
            hosted.state = "loading"
            log.info("loading %s (%s)", hosted.model_id, "on request")
            self.loader.submit(hosted.model_id)
            self._changed()

    def _make_room(self, size: int, keep: Hosted) -> bool:
        """Unload least recently used idle models until one more of `size` bytes fits."""
        while True:
            resident = [h for h in self.models.values() if h.state in ("loaded", "loading") and h is not keep]
            over_count = self.limits.max_models and len(resident) + 1 > self.limits.max_models
            used = sum(h.size_bytes for h in resident)
            over_bytes = self.limits.max_bytes and used + size > self.limits.max_bytes
            if not over_count and not over_bytes:
                return True
            idle = sorted((h for h in resident if h.state == "loaded" and not h.pinned and not h.busy),
                          key=lambda h: h.last_used)
            if not idle:
                return False
            self._unload(idle[0], "to make room")

    def _finish_load(self, done: LoadDone, now: float) -> list[RequestOutput]:
        hosted = self.models.get(done.model_id)
        if hosted is None or hosted.state != "loading":
            return []
        if done.error is not None:
            log.warning("loading %s failed: %s", hosted.model_id, done.error)
            return self._fail(hosted, done.error, code="model_load_failed")
        try:
            self._install(hosted, done.loaded)
        except Exception as exc:  # e.g. a vision model whose processor cannot be set up
            log.exception("setting up %s failed", hosted.model_id)
            return self._fail(hosted, f"setting up {hosted.model_id} failed: {exc}", code="model_load_failed")
        hosted.last_used = now
        log.info("loaded %s in %.1f s (%s weights, %.2f GiB)", hosted.model_id, done.seconds, done.loaded.weights,
                 hosted.size_bytes / 2**30)
        outputs = []
        for gateway, req, _ in hosted.waiting:
            out = hosted.scheduler.admit(gateway, req)
            if out is not None:
                outputs.append(out)
        hosted.waiting.clear()
        for reply in hosted.load_calls:
            reply(hosted.info())
        hosted.load_calls.clear()
        self._make_room(0, keep=hosted)  # the measured size may exceed the estimate
        self._changed()
        return outputs

    def _install(self, hosted: Hosted, loaded: Any) -> None:
        from .models.weights import weights_bytes

        hosted.scheduler, hosted.tokenizer_hash = self.build(loaded)
        hosted.size_bytes = weights_bytes(loaded.model)
        hosted.context_length = loaded.context_length
        hosted.capabilities = ["chat"] + (["vision"] if loaded.is_vision else [])
        hosted.state, hosted.error = "loaded", None

    def _unload(self, hosted: Hosted, why: str) -> None:
        import mlx.core as mx

        kv = getattr(hosted.scheduler, "kv", None)
        if kv is not None:
            kv.save_all()  # its conversations resume after the next load
        hosted.scheduler.close()
        hosted.scheduler = None
        hosted.state = "unloaded"
        gc.collect()
        mx.clear_cache()
        log.info("unloaded %s (%s)", hosted.model_id, why)
        self._changed()

    def _fail(self, hosted: Hosted, message: str, *, code: str) -> list[RequestOutput]:
        hosted.state, hosted.error = "failed", message
        err = ErrorInfo(message, type="server_error", code=code, status=500)
        outputs = [rejection(req.request_id, err) for _, req, _ in hosted.waiting]
        hosted.waiting.clear()
        for reply in hosted.load_calls:
            reply(err)
        hosted.load_calls.clear()
        self._changed()
        return outputs

    def _time_out(self, hosted: Hosted, now: float) -> list[RequestOutput]:
        if not hosted.waiting:
            return []
        late = [w for w in hosted.waiting if now - w[2] > self.limits.load_timeout]
        if not late:
            return []
        hosted.waiting = [w for w in hosted.waiting if now - w[2] <= self.limits.load_timeout]
        why = "is still loading" if hosted.state == "loading" else "is waiting for memory (every loaded model is busy)"
        err = ErrorInfo(f"model {hosted.model_id} {why}; retry shortly", type="overloaded_error", code="model_loading",
                        status=503)
        return [rejection(req.request_id, err) for _, req, _ in late]

    # ------------------------------------------------------------------ #
    def _find(self, model_id: str | None) -> Hosted | None:
        model_id = model_id or self.default
        if model_id is None:
            return None
        if model_id not in self.models and self.refresh():  # a model dropped into the folder just now
            self._changed()
        return self.models.get(model_id)

    def _not_served(self, model_id: str | None) -> ErrorInfo:
        names = ", ".join(sorted(self.models)) or "none"
        what = f"model {model_id!r} is not served by this worker" if model_id else "no model named and no default"
        return ErrorInfo(f"{what} (it serves: {names})", param="model", code="model_not_found", status=404)

    def _requests_of(self, hosted: Hosted) -> list[str]:
        return [rid for rid, m in self._where.items() if m == hosted.model_id]

    def _seen(self, out: RequestOutput | None) -> RequestOutput | None:
        if out is not None and out.finish_reason is not None:
            self._where.pop(out.request_id, None)
        return out

    def _seen_all(self, outputs: Iterable[RequestOutput]) -> list[RequestOutput]:
        return [o for o in outputs if self._seen(o) is not None]

    def _changed(self) -> None:
        self.on_change(self.infos())
