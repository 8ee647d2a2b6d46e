"""Continuous batching: admit requests, step the batch, turn tokens into outputs.

Built on mlx-lm's ``BatchGenerator``, through ``worker/batch.py`` (the one
module that calls it): requests join and leave the running batch between
steps, and a long prompt is prefilled in chunks of ``prefill_chunk`` tokens
interleaved with decode steps, so one big prompt never freezes the streams
already running. Runs on the compute thread only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.messages import CacheDecision, ChatRequest, ErrorInfo, RequestOutput, SamplingParams

from .batch import Batch, KVState, SequenceSpec, Token
from .choices import Choices, fork_caches
from .config import DEFAULTS
from .generation_config import Sampling, SamplingDefaults, build_defaults
from .grammar import (
    GrammarCompiler,
    GrammarError,
    GrammarProcessor,
    marker_tokens,
)
from .kv.manager import ControlError, PromptCacheManager
from .logprobs import TokenBytes, read_logprobs
from .prefix_sharing import PrefixSharing
from .prompt import Prompt, PromptError, render_prompt, template_source
from .prompt_jobs import INLINE_CHARS, PromptJobs, schema_chars, text_chars
from .raw_prompt import render_raw
from .request_setup import RequestSetup, sampling_n
from .sampling import make_logits_processors, make_sampler
from .sequence import Sequence, ended_unstarted, prompt_only, rejection
from .tool_format import FALLBACK
from .tool_format import detect as detect_tool_format

log = logging.getLogger("kmlx.worker.scheduler")


@dataclass
class SchedulerLimits:
    max_running: int = DEFAULTS.max_running  # sequences decoding together
    max_queued: int = DEFAULTS.max_queued  # admitted but not yet decoding (--max-queued)
    prefill_chunk: int = DEFAULTS.prefill_chunk_gpu  # prompt tokens per step and sequence
    default_max_tokens: int | None = None  # None: up to the context length
    max_tokens_limit: int | None = None  # operator's cap on any one completion


@dataclass
class _Rendering:
    """A request whose prompt the prompt thread is rendering."""

    gateway: bytes
    request: ChatRequest
    sampling: Sampling
    arrived: float


@dataclass
class SchedulerCounters:
    admitted: int = 0
    rejected: int = 0
    finished: int = 0
    aborted: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    steps: int = 0


class Scheduler(RequestSetup):
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str,
        context_length: int,
        limits: SchedulerLimits,
        kv: PromptCacheManager | None = None,
        sampling_defaults: SamplingDefaults | None = None,
        template_defaults: dict[str, Any] | None = None,
        grammar_cache_size: int = DEFAULTS.grammar_cache_size,
        grammars: GrammarCompiler | None = None,  # tests share one (building it costs ~1 s of CPU)
        batch: Callable[..., Batch] = Batch,  # a distributed rank 0 mirrors its batch (worker/distributed/leader.py)
    ):
        self.tokenizer = tokenizer
        self.sampling_defaults = sampling_defaults or build_defaults(None)
        self.template_defaults = template_defaults or {}
        self.tool_format = detect_tool_format(tokenizer, template_source(tokenizer))
        self.grammars = grammars or GrammarCompiler(tokenizer, cache_size=grammar_cache_size)
        fmt = self.tool_format
        self.marker_tokens = marker_tokens(tokenizer, [fmt.start, fmt.end, FALLBACK.start, FALLBACK.end])
        self.token_bytes = TokenBytes(tokenizer, self.grammars.peek)
        self.kv = kv
        if kv is not None:
            kv.bind_model(model)  # loaded caches are checked against the model's own layout
        self.model_id = model_id
        self.context_length = context_length
        self.limits = limits
        self.counters = SchedulerCounters()
        self._eos = set(tokenizer.eos_token_ids)
        self._batch = batch(
            model, eos_token_ids=self._eos, max_running=limits.max_running, prefill_chunk=limits.prefill_chunk
        )
        self.vocab_size = _vocab_size(model, tokenizer)  # bounds the token ids a raw prompt may hold
        self._by_uid: dict[int, Sequence] = {}
        self._by_id: dict[str, Sequence] = {}
        self._retired: dict[int, Sequence] = {}  # finished by a stop string, awaiting removal
        self.prompts = PromptJobs(tokenizer, context_length)  # big prompts render beside the loop
        self._rendering: dict[str, _Rendering] = {}
        self._sharing = PrefixSharing(kv, self._batch.state) if kv is not None and kv.config.enabled else None

    # ------------------------------------------------------------------ #
    @property
    def running(self) -> int:
        return sum(1 for s in self._by_uid.values() if s.first_token_at is not None)

    @property
    def waiting(self) -> int:
        return len(self._by_uid) - self.running + len(self._rendering) + len(self._parked())

    @property
    def has_work(self) -> bool:
        """Something for ``step`` to do now (a prompt still rendering is not:
        the prompt thread wakes the loop when it is done)."""
        return bool(self._by_uid) or self.prompts.has_done or bool(self._parked())

    def warm_up(self) -> float:
        """Compile the kernels of the shapes serving uses, on the running
        batch, before the worker reports ready (worker/warmup.py); seconds."""
        from protocol.chat import chat_messages

        from .warmup import warm_up

        t0 = time.perf_counter()
        # The chat template compiles on its first render: that too before the first request.
        self.render(self.tokenizer, ChatRequest("warm-up", chat_messages([{"role": "user", "content": "Hello"}]), SamplingParams()))
        return warm_up(self._batch, max_running=self.limits.max_running, prefill_chunk=self.limits.prefill_chunk,
                       vocab_size=self.vocab_size) + time.perf_counter() - t0

    def kv_tokens(self) -> int:
        return sum(len(s.prompt.token_ids) + s.completion_tokens for s in self._by_uid.values())

    def sequences_of(self, gateway: bytes) -> list[str]:
        return [s.request_id for s in [*self._by_id.values(), *self._parked()] if s.gateway == gateway] + [
            rid for rid, r in self._rendering.items() if r.gateway == gateway
        ]

    def _parked(self) -> list[Sequence]:
        """Requests waiting for a running sequence's prefix (prefix_sharing.py)."""
        return [p.seq for p in self._sharing.parked.values()] if self._sharing is not None else []

    def set_wake(self, wake: Callable[[], None]) -> None:
        """How a helper thread wakes a compute loop idling on its inbox."""
        self.prompts.set_wake(wake)

    # ------------------------------------------------------------------ #
    def admit(self, gateway: bytes, req: ChatRequest) -> RequestOutput | None:
        """Queue a request. Returns its first output (the cache decision, or
        with ``finish_reason="error"`` why it was refused), or None when its
        prompt is big enough to render on the prompt thread: that output
        then comes from a later ``step``."""
        arrived = time.perf_counter()
        if self.waiting >= self.limits.max_queued:
            self.counters.rejected += 1
            return rejection(
                req.request_id,
                ErrorInfo("worker queue is full, retry shortly", type="overloaded_error", code="queue_full", status=503),
            )
        sampling = self.resolve_sampling(req)
        if isinstance(sampling, ErrorInfo):
            self.counters.rejected += 1
            return rejection(req.request_id, sampling)
        chars = text_chars(req)
        too_long = self.prompts.too_long(req, chars)
        if too_long is not None:
            self.counters.rejected += 1
            return rejection(req.request_id, too_long)
        if chars + schema_chars(req) > INLINE_CHARS:  # a big prompt, or a big grammar to compile
            self._rendering[req.request_id] = _Rendering(gateway, req, sampling, arrived)
            self.prompts.submit(req.request_id, lambda tokenizer: self._render_and_compile(tokenizer, req))
            return None
        try:
            prompt = self.render(self.tokenizer, req)
        except PromptError as exc:
            self.counters.rejected += 1
            return rejection(req.request_id, ErrorInfo(str(exc), param=exc.param, code=exc.code))
        return self._admit_prompt(gateway, req, sampling, prompt, arrived)

    def render(self, tokenizer: Any, req: ChatRequest) -> Prompt:
        """The request's prompt token ids (either thread, its own tokenizer); raises PromptError."""
        if req.prompt is not None:
            return render_raw(tokenizer, req.prompt, req.suffix, vocab_size=self.vocab_size)
        variables = self.template_variables(req, tokenizer)
        return render_prompt(tokenizer, req.messages, model_id=self.model_id, tools=self.tool_plan(req), variables=variables,
                             mark_last_message=self.kv is not None and self.kv.needs_checkpoints)

    def _render_and_compile(self, tokenizer: Any, req: ChatRequest) -> tuple[Prompt, GrammarProcessor | None]:
        """The prompt thread's job: render, tokenize, compile the output grammar."""
        prompt = self.render(tokenizer, req)
        return prompt, self.constraint(req, prompt.starts_in_reasoning)

    def _rendered(self, r: _Rendering, prepared: Any, error: BaseException | None) -> RequestOutput | None:
        """The prompt thread is done with a request: admit or refuse it."""
        req = r.request
        if error is not None or prepared is None:
            self.counters.rejected += 1
            if isinstance(error, PromptError):
                return rejection(req.request_id, ErrorInfo(str(error), param=error.param, code=error.code))
            if isinstance(error, GrammarError):
                return rejection(req.request_id, ErrorInfo(str(error), param=error.param, code="unsupported_schema"))
            log.error("preparing the prompt of %s failed: %r", req.request_id, error)
            err = ErrorInfo(f"the worker could not render the prompt: {error}", type="server_error", code="prompt_error", status=500)
            return rejection(req.request_id, err)
        prompt, constraint = prepared
        return self._admit_prompt(r.gateway, req, r.sampling, prompt, r.arrived, constraint)

    def _admit_prompt(
        self, gateway: bytes, req: ChatRequest, sampling: Sampling, prompt: Prompt, arrived: float,
        constraint: GrammarProcessor | None | bool = True,
    ) -> RequestOutput | None:
        """Admission once the prompt's token ids are known. ``constraint``:
        the compiled output grammar, or True to compile it here."""
        if constraint is True:
            try:
                constraint = self.constraint(req, prompt.starts_in_reasoning)
            except GrammarError as exc:
                self.counters.rejected += 1
                return rejection(req.request_id, ErrorInfo(str(exc), param=exc.param, code="unsupported_schema"))

        n_prompt = len(prompt.token_ids)
        max_tokens = self.completion_budget(req, n_prompt, "the messages" if req.prompt is None else "the prompt", sampling=sampling)
        if isinstance(max_tokens, ErrorInfo):
            self.counters.rejected += 1
            return rejection(req.request_id, max_tokens)
        if req.sampling.max_tokens == 0:  # count only: no KV, no batch
            self.counters.admitted += 1  # and finished at once: every admitted request finishes once
            self.counters.finished += 1
            return prompt_only(req.request_id, n_prompt)

        seq = Sequence(
            request=req,
            gateway=gateway,
            prompt=prompt,
            sampling=sampling,
            detokenizer=self.detokenizer(req),
            text=self.text_stream(req, prompt.starts_in_reasoning),
            max_tokens=max_tokens,
            cache_decision=CacheDecision("disabled", 0, n_prompt),
            constraint=constraint,
            arrived=arrived,
        )
        if sampling_n(req) > 1:
            seq.choices = Choices(sampling_n(req), [seq])
        return self._place(seq)

    def _place(self, seq: Sequence) -> RequestOutput | None:
        """Plan the prompt cache and join the batch — or wait (None) for a
        running sequence that is computing this prompt's prefix."""
        if self._sharing is not None and self._sharing.wait(seq, self._by_uid.values()):
            return None
        req, prompt = seq.request, seq.prompt
        try:
            if self.kv is not None:
                seq.plan = self.kv.plan(req, prompt.token_ids, prompt.system_tokens, prompt.last_message_end)
                seq.cache_decision = seq.plan.decision
        except ControlError as exc:  # its saved cache is damaged: this request alone fails
            self.counters.rejected += 1
            return rejection(req.request_id, ErrorInfo(str(exc), param="conversation", code=exc.code, status=exc.status))
        cached = seq.cache_decision.cached_tokens
        self._insert(seq, prompt.token_ids[cached:], seq.plan.cache if seq.plan else None, prompt.token_ids[:cached])
        if seq.plan is not None:
            seq.plan.cache = None  # the batch has it; holding it here would keep a copy of the prefix alive
        self.counters.admitted += 1
        self.counters.prompt_tokens += len(prompt.token_ids) - cached
        # Announce the cache decision now, so the gateway can send response
        # headers before a long prefill finishes.
        return seq.output()

    def _insert(self, seq: Sequence, tokens: list[int], cache: list[Any] | None, cached_tokens: list[int]) -> None:
        """Put a sequence into the running batch: ``tokens`` still to prefill
        on top of ``cache`` (which already holds ``cached_tokens``), stopping
        at the plan's checkpoints so their states can be stored."""
        seq.kv_length = len(cached_tokens)
        uid = self._batch.add(
            SequenceSpec(
                tokens=tokens,
                max_tokens=seq.max_tokens,
                cache=cache,
                cached_tokens=cached_tokens,
                sampler=make_sampler(seq.sampling, seed_offset=seq.choice),
                logits_processors=make_logits_processors(seq.sampling) + ([seq.constraint] if seq.constraint else []),
                stop_on_eos=not seq.request.sampling.ignore_eos,
                logprobs=bool(seq.sampling.logprobs),
                pauses=[b - len(cached_tokens) for b in (seq.plan.checkpoints if seq.plan else [])],
            )
        )
        seq.uid = uid
        self._by_uid[uid] = seq
        if seq.choice == 0:  # a request is found by its first choice
            self._by_id[seq.request_id] = seq

    def abort(self, request_id: str, *, error: ErrorInfo | None = None) -> RequestOutput | None:
        """Remove a request wherever it is; idempotent."""
        rendering = self._rendering.pop(request_id, None)
        if rendering is not None:
            self.prompts.cancel(request_id)
            self.counters.aborted += error is None
            self.counters.errors += error is not None
            return ended_unstarted(request_id, error, rendering.arrived, CacheDecision(mode="none"))
        parked = self._sharing.remove(request_id) if self._sharing is not None else None
        if parked is not None:  # never admitted (counted when placed): like a prompt still rendering
            self.counters.aborted += error is None
            self.counters.errors += error is not None
            return parked.final("error" if error else "abort", error=error)
        seq = self._by_id.get(request_id)
        if seq is None:
            return None
        members = seq.choices.live() if seq.choices is not None else [seq]
        self._batch.remove([m.uid for m in members])
        self.counters.aborted += error is None
        self.counters.errors += error is not None
        outs = [self._retire(m, "error" if error else "abort", error=error) for m in members]
        return outs[-1]

    def expired(self, now: float) -> list[str]:
        requests = [s.request for s in [*self._by_id.values(), *self._parked()]] + [r.request for r in self._rendering.values()]
        return [r.request_id for r in requests if r.deadline and r.deadline < now]

    def _current_cache(self, uid: int) -> list[Any]:
        """A running sequence's KV cache as it is now."""
        state = self._batch.state(uid)
        assert state is not None, f"sequence {uid} is not in the batch"
        return state.cache

    # ------------------------------------------------------------------ #
    def step(self) -> list[RequestOutput]:
        """Admit the requests whose prompts are rendered, then one decode
        step for the running batch plus one prefill chunk."""
        outputs: list[RequestOutput | None] = []
        for done in self.prompts.take_done():
            rendering = self._rendering.pop(done.request_id, None)
            if rendering is not None:
                outputs.append(self._rendered(rendering, done.result, done.error))
        if self._by_uid:
            outputs += self._step_batch()
        if self._sharing is not None and self._sharing.parked:  # their prefix may be ready now
            outputs += [self._place(seq) for seq in self._sharing.ready(self._by_uid)]
        return [o for o in outputs if o is not None]

    def _step_batch(self) -> list[RequestOutput]:
        result = self._batch.step()
        self.counters.steps += 1
        now = time.perf_counter()
        outputs: list[RequestOutput] = []
        for p in result.prefilled:
            seq = self._by_uid.get(p.uid)
            if seq is not None:
                self._prefilled(seq, p.done, p.paused, now)
        self._read_logprobs(result.tokens)
        stopped_early: list[int] = []
        for t in result.tokens:
            seq = self._by_uid.get(t.uid)
            if seq is None:
                continue
            if seq.choices is not None and not seq.choices.forked:
                self._fork(seq, t.final.cache if t.final is not None else None)
            if t.final is not None:
                seq.final_state = t.final
            out = self._on_token(seq, t.token, t.finish, now)
            if out is not None:
                outputs.append(out)
            if seq.finished and t.finish is None:
                stopped_early.append(t.uid)  # a stop string: still in the batch
        if stopped_early:
            states = self._batch.remove(stopped_early, keep_state=self.kv is not None)
            for uid in stopped_early:
                self._commit(self._retired.pop(uid), states.get(uid))
        return outputs

    def _prefilled(self, seq: Sequence, done: int, paused: bool, now: float) -> None:
        """Prefill progress: ``done`` prompt tokens past the cached ones are in the KV."""
        seq.prefill_started = seq.prefill_started or now
        seq.kv_length = seq.cache_decision.cached_tokens + done
        if paused and self.kv is not None and seq.plan is not None and seq.kv_length in seq.plan.checkpoints:
            state = self._batch.state(seq.uid)  # stopped at a message boundary: keep the state there
            if state is not None:
                self.kv.checkpoint(seq.plan, state.tokens, state.cache)

    def _fork(self, leader: Sequence, final_cache: list[Any] | None) -> None:
        """The other choices of ``leader``'s request join the batch, from a
        copy of its prompt KV (choices.py); a fork starts from the prompt's
        last token, so it samples a first token of its own."""
        group = leader.choices
        group.forked = True
        req, ids = leader.request, leader.prompt.token_ids
        caches = fork_caches(lambda: self._current_cache(leader.uid), group.n - 1, len(ids), final_cache)
        for i, cache in enumerate(caches, start=1):
            fork = Sequence(
                request=req, gateway=leader.gateway, prompt=leader.prompt, sampling=leader.sampling,
                detokenizer=self.detokenizer(req), text=self.text_stream(req, leader.prompt.starts_in_reasoning),
                max_tokens=leader.max_tokens, cache_decision=leader.cache_decision, choice=i, choices=group,
                constraint=self.constraint(req, leader.prompt.starts_in_reasoning),
            )
            fork.arrived, fork.prefill_started, fork.announced = leader.arrived, leader.prefill_started, True
            group.members.append(fork)
            if cache is not None:
                self._insert(fork, ids[-1:], cache, ids[:-1])
            else:  # a cache that cannot be trimmed: this choice prefills the prompt itself
                self._insert(fork, list(ids), None, [])

    def _read_logprobs(self, tokens: list[Token]) -> None:
        """Log-probabilities for the sequences that asked, all in one read."""
        asked: list[tuple[Sequence, tuple[int, Any, int]]] = []
        for t in tokens:
            seq = self._by_uid.get(t.uid)
            if seq is not None and seq.sampling.logprobs and not (t.finish == "stop" and t.token in self._eos):
                asked.append((seq, (t.token, t.logprobs, seq.sampling.top_logprobs)))
        if asked:
            for (seq, _), lp in zip(asked, read_logprobs([a[1] for a in asked], self.token_bytes)):
                seq.logprobs.append(lp)

    def _on_token(self, seq: Sequence, token: int, finish: str | None, now: float) -> RequestOutput | None:
        if seq.first_token_at is None:
            seq.first_token_at = now
            seq.prefill_started = seq.prefill_started or now
            seq.kv_length = len(seq.prompt.token_ids)
        seq.last_token_at = now
        seq.completion_tokens += 1
        self.counters.generation_tokens += 1
        if not (finish == "stop" and token in self._eos):
            seq.detokenizer.add_token(token)
        if finish is not None:
            seq.detokenizer.finalize()
        content, reasoning = seq.text.feed(seq.detokenizer.last_segment)
        if seq.text.stopped:
            finish = "stop"
        if finish is None:
            if content or reasoning or not seq.announced or seq.text.has_calls or seq.logprobs:
                return seq.output(content, reasoning, tokens=1)
            return None
        tail_c, tail_r = seq.text.finish()
        reason = "stop" if finish == "stop" else "length"
        return self._retire(seq, reason, content + tail_c, reasoning + tail_r)

    def _retire(self, seq: Sequence, reason: str, content: str = "", reasoning: str = "", error: ErrorInfo | None = None) -> RequestOutput:
        self._by_uid.pop(seq.uid, None)
        if reason in ("stop", "length"):
            if seq.final_state is None:
                self._retired[seq.uid] = seq  # stopped by a stop string: state comes with its removal
            else:
                self._commit(seq, seq.final_state)
        else:
            self._commit(seq, None)  # aborted or failed: nothing is committed
        out = seq.final(reason, content, reasoning, error=error)  # type: ignore[arg-type]
        if out.finish_reason is not None:  # the request is over (its last choice, with n > 1)
            self._by_id.pop(seq.request_id, None)
            self.counters.finished += 1
        return out

    def _commit(self, seq: Sequence, state: KVState | None) -> None:
        """Hand a finished sequence's KV to the prompt cache (None: nothing to keep)."""
        tokens, cache = (state.tokens, state.cache) if state is not None else (None, None)
        if self.kv is not None and seq.plan is not None:
            self.kv.finish(seq.plan, tokens, cache, hashes=list(seq.prompt.message_hashes), boundaries=[seq.prompt.system_tokens])

    def close(self) -> None:
        self.prompts.close()
        self._batch.close()


def _vocab_size(model: Any, tokenizer: Any) -> int:
    """Ids the tokenizer knows (added tokens included) that the embedding has rows for."""
    n = len(tokenizer.get_vocab())
    rows = getattr(getattr(model, "args", None), "vocab_size", None)
    return min(n, rows) if isinstance(rows, int) and rows > 0 else n
