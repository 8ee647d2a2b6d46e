"""The compute loop: where the model runs after start-up.

Every forward pass and KV operation happens on this thread (a vision
worker's media thread also uses MLX, for decoding inputs and, optionally,
the vision tower, on its own stream: worker/vision/media_thread.py).

Each turn of the loop drains the inbox (new requests, aborts, control calls,
vanished gateways), lets the model host swap in finished loads (and time out
requests waiting for one), runs one step of every model that has work, and
sends that step's outputs batched per gateway: one message per step per
gateway, not one per token.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import msgspec

from protocol.messages import (
    Abort,
    ChatRequest,
    ControlCall,
    ControlReply,
    ErrorInfo,
    ModelInfo,
    RequestOutput,
    StepOutputs,
    WorkerLoad,
)

from . import failpoints
from .kv.manager import ControlError
from .model_host import ModelHost
from .sequence import rejection
from .tokenize_calls import detokenize, tokenize
from .transport import GatewayGone, InboxItem, Transport, Wake
from .watchdog import LoopStalled, Progress

log = logging.getLogger("kmlx.worker.engine")

ControlHandler = Callable[[dict[str, Any]], dict[str, Any]]


class Engine:
    def __init__(
        self, host: ModelHost, transport: Transport, inbox: queue.Queue[InboxItem], *,
        on_idle: Callable[[], None] | None = None, more_stats: Callable[[], dict[str, Any]] | None = None,
    ):
        self.host = host
        self.transport = transport
        self.inbox = inbox
        # A distributed rank 0: a heartbeat to the other ranks when idle, and the group's stats.
        self.on_idle = on_idle
        self.more_stats = more_stats
        self.progress = Progress()  # read by the watchdog (worker/watchdog.py)
        self.start_time = time.time()  # wall clock, for uptime
        self._stop = False
        self._draining = False
        self._pending: dict[bytes, list[RequestOutput]] = defaultdict(list)
        self._owner: dict[str, bytes] = {}  # request id -> gateway
        # Whitelisted control calls; later features register theirs here.
        self.controls: dict[str, ControlHandler] = {
            "ping": lambda _args: {},  # answered by this loop: proof it runs; the reply carries the load
            "stats": lambda _args: self.stats(),
            "tokenize": lambda args: tokenize(self.host.scheduler_for(args.get("model")), args),
            "detokenize": lambda args: detokenize(self.host.scheduler_for(args.get("model")), args),
            "conv_save": lambda args: self._kv(args).save(args),
            "conv_load": lambda args: self._kv(args).load(args),
            "conv_stats": lambda args: self._kv(args).stats(args),
            "conv_delete": lambda args: self._kv(args).delete(args),
            "model_unload": lambda args: msgspec.to_builtins(self.host.unload(str(args.get("model", "")))),
        }

    # ------------------------------------------------------------------ #
    def run(self) -> None:
        progress = self.progress
        while not self._stop:
            progress.mark("waiting for work")
            self._drain_inbox(block=not self.host.has_work)
            progress.mark("swapping in loaded models")
            for out in self.host.poll(time.monotonic()):
                self._queue(out)
            if self.host.has_work:
                progress.mark("a batch step")
                try:
                    failpoints.hit("compute_step")
                    outputs = self.host.step()
                except Exception as exc:  # a model failure must not hang every client
                    log.exception("compute step failed")
                    outputs = self._fail_all(f"the worker failed while generating: {exc}")
                for out in outputs:
                    self._queue(out)
            elif self.on_idle is not None:
                self.on_idle()
            self._expire_deadlines()
            self._flush()
            if self._draining and self.host.idle:  # nothing running, waiting, rendering or loading
                return

    def stop(self, *, drain: bool) -> None:
        """Called from the watchdog thread: finish running work first if ``drain``."""
        if drain:
            self._draining = True
        else:
            self._stop = True
        self.inbox.put(Wake("stop"))

    @property
    def draining(self) -> bool:
        return self._draining

    def abort_all(self) -> None:
        """End every request still open (shutdown): each gets its final output."""
        for rid in list(self._owner):
            out = self.host.abort(rid)
            if out is not None:
                self._queue(out)
        self._flush()

    def stats(self) -> dict[str, Any]:
        """The worker's counters: summed over its models (one model's own in ``models``)."""
        per_model = {h.model_id: _scheduler_stats(h.scheduler) for h in self.host.loaded}
        load = self._load()
        totals = {key: sum(m[key] for m in per_model.values()) for key in _COUNTERS}
        default = self.host.models.get(self.host.default or "")
        kv = default.scheduler.kv if default is not None and default.scheduler is not None else None
        return {
            "worker_id": self.transport.info.worker_id,
            "model": self.transport.info.model_id,
            "world_size": self.transport.info.world_size,  # ranks serving the model (docs/distributed.md)
            "uptime_seconds": round(time.time() - self.start_time, 1),
            "running": load.running,
            "waiting": load.waiting,
            "kv_tokens": load.kv_tokens,
            **totals,
            "steps": load.steps,
            "draining": self._draining,
            "kv_cache": kv.summary() if kv else {"enabled": False},
            "models": {h.model_id: {"state": h.state, **per_model.get(h.model_id, {})} for h in self.host.models.values()},
            **(self.more_stats() if self.more_stats else {}),
        }

    # ------------------------------------------------------------------ #
    def _drain_inbox(self, *, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: InboxItem) -> None:
        if isinstance(item, Wake):
            return  # its work (stop, finished jobs) is picked up by the loop itself
        if isinstance(item, LoopStalled):
            # The watchdog told the gateways, which failed these requests
            # already; finish them here too (their outputs are ignored).
            outs = self._fail_all(f"the worker's compute loop was stuck for {item.seconds:.0f} s", code="worker_stalled", status=503)
            for failed in outs:
                self._queue(failed)
            return
        if isinstance(item, GatewayGone):
            orphans = self.host.sequences_of(item.gateway)
            if orphans:
                log.info("gateway went away: aborting %d orphaned request(s)", len(orphans))
            for rid in orphans:
                self.host.abort(rid)
                self._owner.pop(rid, None)
            self._pending.pop(item.gateway, None)
            return
        msg, gateway = item.message, item.gateway
        if isinstance(msg, ChatRequest):
            if self._draining:
                err = ErrorInfo("worker is shutting down", type="overloaded_error", code="shutting_down", status=503)
                self._send_now(gateway, StepOutputs(outputs=[_logged(rejection(msg.request_id, err))], load=self._load()))
                return
            if msg.request_id in self._owner:
                err = ErrorInfo(f"duplicate request id {msg.request_id}", code="duplicate_id")
                self._send_now(gateway, StepOutputs(outputs=[_logged(rejection(msg.request_id, err))], load=self._load()))
                return
            self._owner[msg.request_id] = gateway
            self.progress.mark("admitting a request")
            out = self.host.admit(gateway, msg, time.monotonic())
            if out is None:  # waiting for its model to load, its prompt to render, or its media
                return
            if out.finish_reason is None:
                log.debug("request %s admitted", msg.request_id, extra={"fields": {
                    "event": "admitted", "request_id": msg.request_id, "conversation_id": msg.conversation_id,
                    "prompt_tokens": out.prompt_tokens, "cache": out.cache_decision.mode if out.cache_decision else None,
                }})
            self._queue(out)
        elif isinstance(msg, Abort):
            for rid in msg.request_ids:
                aborted = self.host.abort(rid)
                if aborted is not None:
                    self._queue(aborted)
        elif isinstance(msg, ControlCall) and msg.method == "model_load":
            self._load_model(gateway, msg)
        elif isinstance(msg, ControlCall):
            self.progress.mark(f"control call {msg.method}")
            self._send_now(gateway, self._control(msg))

    def _load_model(self, gateway: bytes, call: ControlCall) -> None:
        """Answered when the load is done (or failed), not now: a load takes a while."""

        def reply(result: ModelInfo | ErrorInfo) -> None:
            if isinstance(result, ErrorInfo):
                self._send_now(gateway, ControlReply(call.call_id, ok=False, error=result))
            else:
                self._send_now(gateway, ControlReply(call.call_id, result=msgspec.to_builtins(result)))

        try:
            self.host.request_load(str(call.args.get("model", "")), reply)
        except LookupError as exc:
            reply(ErrorInfo(str(exc), code="model_not_found", param="model", status=404))

    def _kv(self, args: dict[str, Any]) -> Any:
        kv = self.host.scheduler_for(args.get("model")).kv
        if kv is None:
            raise ControlError("conversation caching is disabled on this worker", code="kv_disabled", status=404)
        return kv

    def _control(self, call: ControlCall) -> ControlReply:
        handler = self.controls.get(call.method)
        if handler is None:
            return ControlReply(call.call_id, ok=False, error=ErrorInfo(f"unknown control call {call.method}", status=404))
        try:
            reply = ControlReply(call.call_id, result=handler(call.args))
            if call.method == "ping":
                reply.load = self._load()
            return reply
        except ControlError as exc:
            return ControlReply(call.call_id, ok=False, error=ErrorInfo(str(exc), code=exc.code, status=exc.status))
        except LookupError as exc:
            return ControlReply(call.call_id, ok=False, error=ErrorInfo(str(exc), status=404))
        except ValueError as exc:
            return ControlReply(call.call_id, ok=False, error=ErrorInfo(str(exc), status=400))
        except Exception as exc:
            log.exception("control call %s failed", call.method)
            return ControlReply(call.call_id, ok=False, error=ErrorInfo(str(exc), type="server_error", status=500))

    def _expire_deadlines(self) -> None:
        for rid in self.host.expired(time.time()):
            err = ErrorInfo("request deadline exceeded", type="timeout_error", code="deadline_exceeded", status=504)
            out = self.host.abort(rid, error=err)
            if out is not None:
                self._queue(out)

    def _fail_all(self, message: str, *, code: str = "worker_error", status: int = 500) -> list[RequestOutput]:
        err = ErrorInfo(message, type="server_error", code=code, status=status)
        outs = []
        for rid in list(self._owner):
            out = self.host.abort(rid, error=err)
            if out is not None:
                outs.append(out)
        return outs

    # ------------------------------------------------------------------ #
    def _queue(self, out: RequestOutput) -> None:
        gateway = self._owner.get(out.request_id)
        if gateway is None:
            return
        if out.finish_reason is not None:
            del self._owner[out.request_id]
            _logged(out)
        self._pending[gateway].append(out)

    def _flush(self) -> None:
        if not self._pending:
            return
        load = self._load()
        for gateway, outs in self._pending.items():
            if outs:
                self.transport.send(gateway, StepOutputs(outputs=outs, load=load))
        self._pending.clear()

    def _send_now(self, gateway: bytes, msg: Any) -> None:
        self.transport.send(gateway, msg)

    def _load(self) -> WorkerLoad:
        running, waiting, kv_tokens, steps = self.host.counters()
        return WorkerLoad(running=running, waiting=waiting, kv_tokens=kv_tokens, steps=steps)


_COUNTERS = ("admitted", "rejected", "finished", "aborted", "errors", "prompt_tokens", "generation_tokens")


def _scheduler_stats(scheduler: Any) -> dict[str, Any]:
    c = scheduler.counters
    return {"running": scheduler.running, "waiting": scheduler.waiting, "kv_tokens": scheduler.kv_tokens(),
            "steps": c.steps, **{key: getattr(c, key) for key in _COUNTERS}}


def _logged(out: RequestOutput) -> RequestOutput:
    """One line per finished request, keyed by the gateway's request id
    (the gateway logs the same id), with the worker's own timings."""
    u = out.usage
    fields: dict[str, Any] = {"event": "finished", "request_id": out.request_id, "finish_reason": out.finish_reason}
    if out.error is not None:
        fields.update(error_code=out.error.code, status=out.error.status)
    if u is not None:
        fields.update(
            prompt_tokens=u.prompt_tokens, cached_tokens=u.cached_tokens, completion_tokens=u.completion_tokens,
            ttft_s=round(u.ttft_seconds, 4), queue_s=round(u.queue_seconds, 4), decode_s=round(u.decode_seconds, 4),
        )
    log.info("request %s %s", out.request_id, out.finish_reason, extra={"fields": fields})
    return out
