"""The scheduler of a vision worker: text requests as usual, image/video
requests through three extra stages before they join the same batch.

    admit ──▶ media thread (decode, processor) ──▶ vision tower (sliced,
    one slice per loop turn) ──▶ prompt prefill (one chunk per loop turn)
    ──▶ the shared batch (worker/batch.py; decode batched with text)

A request with no media part takes the base ``Scheduler`` path unchanged,
prompt caching included. A vision request reports its cache as
``disabled``: its KV is not reused across turns (image features and mrope
positions would have to be matched too; see docs/vision.md).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from protocol.chat import has_media
from protocol.messages import CacheDecision, ChatRequest, ErrorInfo, RequestOutput

from ..grammar import GrammarError, GrammarProcessor
from ..prompt import Prompt, PromptError
from ..prompt_jobs import text_chars
from ..scheduler import Scheduler, SchedulerLimits
from ..sequence import Sequence, ended_unstarted, prompt_only, rejection
from .batch_model import BatchView
from .media import MediaError, MediaLimits
from .media_thread import MediaThread
from .prefill import PrefillJob, VisionPrefiller
from .prompt import prepare_media, tokenize
from .sliced_encoder import SlicedEncoder
from .sliced_encoder import supports as _supports_tower

log = logging.getLogger("kmlx.worker.vision")


@dataclass
class _Pending:
    gateway: bytes
    request: ChatRequest
    arrived: float


@dataclass
class _Encoded:
    """The media thread's result for one request."""

    job: PrefillJob | None  # None: too long for the context, or encoding left to the loop
    token_ids: list[int]
    starts_in_reasoning: bool
    images: int
    inputs: tuple[Any, Any, dict[str, Any]] | None = None  # (ids, pixels, extra) for the loop to encode
    constraint: GrammarProcessor | None = None  # the output grammar, compiled here too (its size is the client's)


@dataclass
class _Prefill:
    seq: Sequence
    job: PrefillJob | None
    inputs: tuple[Any, Any, dict[str, Any]] | None = None
    slices: Any = None  # the sliced encoder's state while the vision tower runs


def supports_slicing(vlm: Any) -> bool:
    tower = getattr(vlm, "vision_tower", None)
    return tower is not None and _supports_tower(tower)


def _private_copy(processor: Any) -> Any:
    import copy

    clone = copy.copy(processor)
    if getattr(processor, "tokenizer", None) is not None:
        clone.tokenizer = copy.deepcopy(processor.tokenizer)
    return clone


class VisionScheduler(Scheduler):
    def __init__(
        self,
        vlm: Any,
        tokenizer: Any,
        processor: Any,
        *,
        model_id: str,
        context_length: int,
        limits: SchedulerLimits,
        media: MediaLimits,
        encode_on: str = "auto",
        **kwargs: Any,
    ):
        self.view = BatchView(vlm)
        super().__init__(self.view, tokenizer, model_id=model_id, context_length=context_length, limits=limits, **kwargs)
        self.processor = processor
        # The media thread tokenizes too; a fast tokenizer must not be used
        # from two threads at once, so it gets its own copy.
        self._media_processor = _private_copy(processor)
        self.media_limits = media
        # Where the vision tower runs (docs/vision.md): "sliced" — on the
        # compute loop, one bounded slice per turn (Qwen2-VL's tower);
        # "media-thread" — beside the loop on its own MLX stream (any model);
        # "compute-loop" — in one turn. "auto": sliced where supported.
        self.sliced = SlicedEncoder(vlm.vision_tower, limits.prefill_chunk) if supports_slicing(vlm) else None
        if encode_on == "auto":
            encode_on = "sliced" if self.sliced is not None else "media-thread"
        if encode_on == "sliced" and self.sliced is None:
            log.warning("no sliced vision tower for %s; using the media thread", type(vlm.vision_tower).__module__)
            encode_on = "media-thread"
        self.encode_on = encode_on
        log.info("vision tower runs: %s", encode_on)
        self.prefiller = VisionPrefiller(vlm, self.view.make_cache)
        self.media = MediaThread()
        self._preparing: dict[str, _Pending] = {}
        self._prefilling: deque[_Prefill] = deque()

    def set_wake(self, wake: Any) -> None:
        """How the media and prompt threads wake a compute loop idling on its inbox."""
        super().set_wake(wake)
        self.media.wake = wake

    # ------------------------------------------------------------------ #
    @property
    def waiting(self) -> int:
        return super().waiting + len(self._preparing) + len(self._prefilling)

    @property
    def has_work(self) -> bool:
        return super().has_work or bool(self._prefilling) or self.media.has_done

    def kv_tokens(self) -> int:
        return super().kv_tokens() + sum(p.job.done_tokens for p in self._prefilling if p.job is not None)

    def sequences_of(self, gateway: bytes) -> list[str]:
        mine = [rid for rid, p in self._preparing.items() if p.gateway == gateway]
        mine += [p.seq.request_id for p in self._prefilling if p.seq.gateway == gateway]
        return super().sequences_of(gateway) + mine

    def expired(self, now: float) -> list[str]:
        mine = [rid for rid, p in self._preparing.items() if p.request.deadline and p.request.deadline < now]
        mine += [p.seq.request_id for p in self._prefilling if p.seq.request.deadline and p.seq.request.deadline < now]
        return super().expired(now) + mine

    # ------------------------------------------------------------------ #
    def admit(self, gateway: bytes, req: ChatRequest) -> RequestOutput | None:
        """Text requests: the base path. Vision requests: queued for the
        media thread; their first output (or refusal) comes from a later
        ``step``, once the prompt size is known. Returns None then."""
        if not has_media(req.messages):
            return super().admit(gateway, req)
        if req.sampling.n > 1:
            self.counters.rejected += 1
            return rejection(req.request_id, ErrorInfo("n > 1 is not supported with images or video", param="n", code="unsupported_parameter"))
        if self.waiting >= self.limits.max_queued:
            self.counters.rejected += 1
            return rejection(
                req.request_id,
                ErrorInfo("worker queue is full, retry shortly", type="overloaded_error", code="queue_full", status=503),
            )
        too_long = self.prompts.too_long(req, text_chars(req))  # before the media thread renders it
        if too_long is not None:
            self.counters.rejected += 1
            return rejection(req.request_id, too_long)
        self._preparing[req.request_id] = _Pending(gateway, req, time.perf_counter())
        self.media.submit(
            req.request_id,
            lambda: self._prepare(req),
        )
        return None

    def abort(self, request_id: str, *, error: ErrorInfo | None = None) -> RequestOutput | None:
        pending = self._preparing.pop(request_id, None)
        if pending is not None:
            self.media.cancel(request_id)
            self._count_end(error)
            return ended_unstarted(request_id, error, pending.arrived, CacheDecision(mode="disabled"))
        for p in self._prefilling:
            if p.seq.request_id == request_id:
                self._prefilling.remove(p)
                self._count_end(error)
                self.counters.finished += 1
                return p.seq.final("error" if error else "abort", error=error)
        return super().abort(request_id, error=error)

    def _count_end(self, error: ErrorInfo | None) -> None:
        self.counters.aborted += error is None
        self.counters.errors += error is not None

    # ------------------------------------------------------------------ #
    def step(self) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        for done in self.media.take_done():
            pending = self._preparing.pop(done.request_id, None)
            if pending is not None:
                outputs.append(self._prepared(pending, done.result, done.error))
        if self._prefilling:
            out = self._prefill_turn()
            if out is not None:
                outputs.append(out)
        if super().has_work:
            outputs += super().step()
        return outputs

    def _prepare(self, req: ChatRequest) -> _Encoded:
        """Media thread: decode, template, processor, output grammar, vision tower."""
        prepared = prepare_media(
            self._media_processor.tokenizer, req.messages, self.media_limits, tools=self.tool_plan(req),
            variables=self.template_variables(req),
        )
        vp = tokenize(self._media_processor, prepared)
        n = len(vp.token_ids)
        if n >= self.context_length:  # refused next; don't run the vision tower for it
            return _Encoded(None, vp.token_ids, vp.starts_in_reasoning, vp.images)
        constraint = self.constraint(req, vp.starts_in_reasoning)  # a GrammarError refuses before the tower runs
        if self.encode_on != "media-thread":
            import mlx.core as mx

            mx.eval(vp.input_ids, *[v for v in (vp.pixel_values, *vp.extra.values()) if isinstance(v, mx.array)])
            inputs = (vp.input_ids, vp.pixel_values, vp.extra)
            return _Encoded(None, vp.token_ids, vp.starts_in_reasoning, vp.images, inputs, constraint)
        job = self.prefiller.encode(vp.input_ids, vp.pixel_values, vp.extra)
        return _Encoded(job, vp.token_ids, vp.starts_in_reasoning, vp.images, constraint=constraint)

    def _prepared(self, pending: _Pending, enc: _Encoded | None, error: BaseException | None) -> RequestOutput:
        """The media thread finished a request: refuse it, or queue its prefill
        and announce it (its first output carries the real prompt size)."""
        req = pending.request
        if error is not None or enc is None:
            self.counters.rejected += 1
            if isinstance(error, (MediaError, PromptError)):
                err = ErrorInfo(str(error), param=error.param, code=error.code or "invalid_request")
            elif isinstance(error, GrammarError):
                err = ErrorInfo(str(error), param=error.param, code="unsupported_schema")
            elif isinstance(error, ValueError):  # mlx-vlm's way of refusing inputs (e.g. token/feature mismatch)
                err = ErrorInfo(f"the model could not process these inputs: {error}", code="vision_error")
            else:
                log.error("preparing %s failed: %r", req.request_id, error)
                err = ErrorInfo(f"the worker could not prepare the media: {error}", type="server_error",
                                code="media_error", status=500)
            return rejection(req.request_id, err)
        n_prompt = len(enc.token_ids)
        what = f"the messages (with {enc.images} image(s) or frame(s))"
        sampling = self.resolve_sampling(req)
        # (no job and no inputs means the media thread found the prompt too long: refused here)
        max_tokens = sampling if isinstance(sampling, ErrorInfo) else self.completion_budget(req, n_prompt, what, sampling=sampling)
        if isinstance(max_tokens, ErrorInfo):
            self.counters.rejected += 1
            return rejection(req.request_id, max_tokens)
        if req.sampling.max_tokens == 0:  # count only
            self.counters.admitted += 1  # and finished at once: every admitted request finishes once
            self.counters.finished += 1
            return prompt_only(req.request_id, n_prompt)
        assert not isinstance(sampling, ErrorInfo)
        seq = Sequence(
            request=req,
            gateway=pending.gateway,
            prompt=Prompt(token_ids=enc.token_ids, starts_in_reasoning=enc.starts_in_reasoning),
            sampling=sampling,
            detokenizer=self.tokenizer.detokenizer,
            text=self.text_stream(req, enc.starts_in_reasoning),
            constraint=enc.constraint,
            max_tokens=max_tokens,
            cache_decision=CacheDecision(mode="disabled", cached_tokens=0, processing_tokens=n_prompt),
        )
        seq.arrived = pending.arrived
        self._prefilling.append(_Prefill(seq, enc.job, enc.inputs))
        self.counters.admitted += 1
        self.counters.prompt_tokens += n_prompt
        return seq.output()

    def _prefill_turn(self) -> RequestOutput | None:
        """One prompt chunk of the oldest vision request, or its hand-over
        to the batch."""
        p = self._prefilling[0]
        try:
            if p.seq.prefill_started is None:
                p.seq.prefill_started = time.perf_counter()
            if p.job is None:
                self._encode_turn(p)
                return None
            if not self.prefiller.step(p.job, self.limits.prefill_chunk):
                return None
            cache, last = self.prefiller.finish(p.job)
        except Exception as exc:  # this request fails; the others keep going
            self._prefilling.popleft()
            log.exception("vision prefill of %s failed", p.seq.request_id)
            bad_input = isinstance(exc, ValueError)
            err = ErrorInfo(
                f"the model could not process these inputs: {exc}",
                type="invalid_request_error" if bad_input else "server_error",
                code="vision_error",
                status=400 if bad_input else 500,
            )
            self.counters.errors += 1
            self.counters.finished += 1
            return p.seq.final("error", error=err)
        self._prefilling.popleft()
        self._join_batch(p.seq, cache, last)
        return None

    def _encode_turn(self, p: _Prefill) -> None:
        """The vision tower on the compute loop: one slice, or all of it."""
        assert p.inputs is not None
        ids, pixels, extra = p.inputs
        if self.encode_on == "compute-loop":
            features = None
        elif p.slices is None:
            assert self.sliced is not None  # encode_on == "sliced" only with a sliced encoder
            p.slices = self.sliced.start(pixels, extra["image_grid_thw"])
            return
        else:
            assert self.sliced is not None
            features = self.sliced.step(p.slices)
            if features is None:
                return
            extra = {**extra, "cached_image_features": features}
        p.job = self.prefiller.encode(ids, pixels, extra)
        p.inputs = p.slices = None

    def _join_batch(self, seq: Sequence, cache: list[Any], last: int) -> None:
        self._insert(seq, [last], cache, seq.prompt.token_ids[:-1])

    def close(self) -> None:
        self.media.close()
        super().close()
