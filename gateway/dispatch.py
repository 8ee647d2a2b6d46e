"""One generation on the worker pool, the same for every API.

An API route translates its request into a ``ChatRequest`` (the protocol's
one request) plus a ``Reply`` (how outputs look on that API's wire), and
``generate`` does the rest: choose a worker, submit, wait for the worker's
admission — trying another worker while nothing has reached the client —
then stream the outputs as they come or collect them into one body, with
deadlines, an ``Abort`` when the client leaves, and the request's one log
line. Chat completions, Anthropic messages, responses and legacy
completions differ only in their translation and their ``Reply``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from protocol import codec
from protocol.messages import CacheDecision, ChatRequest, ErrorInfo, RequestOutput, Usage

from .errors import APIError
from .output_stream import OutputStream
from .pool import NoWorkerAvailable, PoolFull, UnknownModel, WorkerPool, routing_error
from .request_log import RequestRecord
from .worker_client import WorkerClient, WorkerUnavailable

log = logging.getLogger("kmlx.gateway.requests")

# Failures that are the worker's, not the request's: another worker may succeed.
_RETRYABLE = frozenset({"worker_unavailable", "queue_full", "shutting_down"})
_DEADLINE_GRACE = 5.0  # the worker expires requests itself; the gateway only backs it up


@dataclass(frozen=True)
class Admitted:
    """What an API's reply knows once a worker has taken the request."""

    request_id: str
    model: str  # the served model id (not necessarily what the client wrote)
    conversation_id: str
    first: RequestOutput  # carries the prompt size and the cache decision
    created: int  # epoch seconds


class Reply(Protocol):
    """How one API shows one generation. Streaming calls ``open``, then
    ``delta`` for each batch of outputs (the last batch ends with the final
    output, whose text counts too), then ``close`` or ``fail``; a whole-body
    answer calls ``body`` with every output, the final one last."""

    def open(self) -> Iterable[bytes]: ...
    def delta(self, outs: list[RequestOutput]) -> Iterable[bytes]: ...
    def close(self, final: RequestOutput) -> Iterable[bytes]: ...
    def fail(self, err: APIError) -> Iterable[bytes]: ...
    def keep_alive(self) -> bytes: ...
    def body(self, outs: list[RequestOutput]) -> dict: ...


@dataclass
class Generation:
    """A translated request: the wire message and what routing needs."""

    wire: ChatRequest
    model: str | None  # as the client named it (None: the only one served)
    affinity: str | None  # the conversation to keep on one worker, if any
    stream: bool = False
    # The client API's names of chat fields that errors name ("max_tokens",
    # "messages", "response_format", ...), e.g. {"messages": "input"}.
    params: dict[str, str] = field(default_factory=dict)


def refuse_if_draining(request: Request) -> None:
    if request.app.state.draining:
        raise APIError(503, "gateway is shutting down", code="shutting_down", headers={"Retry-After": "5"})


def new_request_id(request: Request, prefix: str, *, default: str | None = None) -> str:
    """The client's sane ``X-Request-Id`` (kept by access.py), else
    ``default`` or an id in the API's own shape (``chatcmpl-…``, ``msg_…``);
    echoed as X-Request-Id."""
    state = request.state
    rid = state.request_id if getattr(state, "request_id_given", False) else default or f"{prefix}{uuid.uuid4().hex}"
    state.request_id = rid
    return rid


def request_deadline(request: Request) -> float | None:
    timeout = request.app.state.config.request_timeout
    return time.time() + timeout if timeout else None


def ensure_encodable(wire: ChatRequest) -> None:
    """JSON allows what MessagePack cannot carry (integers past 64 bits, lone
    UTF-16 surrogates), e.g. deep inside free-form `tools`: refuse it here as
    the client's error rather than fail later as a server error."""
    try:
        codec.encode(wire)
    except (OverflowError, UnicodeEncodeError) as exc:
        reason = "an integer is too large" if isinstance(exc, OverflowError) else "a string is not valid Unicode"
        raise APIError(400, f"the request cannot be processed: {reason}", code="invalid_value") from None


def conversation_headers(conversation_id: str | None, cache: CacheDecision | None) -> dict[str, str]:
    cache = cache or CacheDecision()
    return {
        "X-Conv-Id": conversation_id or "",
        "X-Conv-KV": cache.mode,
        "X-Conv-Cached-Tokens": str(cache.cached_tokens),
        "X-Conv-Processing-Tokens": str(cache.processing_tokens),
    }


def response_headers(request_id: str, conversation_id: str | None, first: RequestOutput | None, worker_id: str) -> dict[str, str]:
    return {
        **conversation_headers(conversation_id, first.cache_decision if first else None),
        "X-Request-Id": request_id,
        "X-Worker-Id": worker_id,
    }


async def generate(request: Request, job: Generation, make_reply: Callable[[Admitted], Reply]) -> Response:
    """Run ``job`` on the pool and answer the client: an SSE stream or one
    JSON body, built by the API's reply."""
    pool: WorkerPool = request.app.state.pool
    keep_alive: float = request.app.state.config.keep_alive_seconds
    wire = job.wire
    ensure_encodable(wire)
    # A reset turn neither uses nor updates the conversation's KV, so it
    # needs no particular worker: it goes to the least-loaded one.
    affinity = None if wire.reset_conversation else job.affinity
    tried: list[WorkerClient] = []
    retry_error: APIError | None = None
    arrived = time.perf_counter()
    rec: RequestRecord = request.app.state.request_log.record(request)
    while True:
        worker, model_id, stream, first = await _start(pool, job, affinity, tried, arrived, retry_error, rec=rec,
                                                       wait_for_load=not job.stream)
        rec.submitted(wire, worker_id=worker.worker_id, model=model_id)
        headers = response_headers(wire.request_id, wire.conversation_id, first, worker.worker_id)
        if first is None:  # streaming, and its model is still loading: the client hears keep-alives meanwhile
            return StreamingResponse(
                _sse_after_load(worker, model_id, stream, job, make_reply, arrived, keep_alive, rec),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        admitted = Admitted(wire.request_id, model_id, wire.conversation_id or "", first, int(time.time()))
        relay = _Relay(worker, admitted, make_reply(admitted), arrived, wire.deadline, rec=rec, params=job.params)
        if job.stream:
            return StreamingResponse(
                relay.sse(stream, keep_alive),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        response = await relay.collect(stream, request, headers)
        if response is not None:
            return response
        # The worker failed mid-generation, but a whole-body answer has not
        # sent a byte yet: run the request again on another worker.
        tried.append(worker)
        retry_error = relay.retry_error


def error_from(out: RequestOutput, params: dict[str, str] | None = None) -> APIError:
    e = out.error
    assert e is not None
    # A model still loading takes longer to be ready than a full queue.
    headers = {"Retry-After": "10" if e.code == "model_loading" else "1"} if e.status == 503 else None
    return APIError(e.status, e.message, type=e.type, param=rename_param(e.param, params or {}), code=e.code, headers=headers)


def rename_param(param: str | None, params: dict[str, str]) -> str | None:
    """A worker's (chat) field name as the client's API calls it. A path
    under a renamed field names the field alone: its indices are chat's."""
    if param is None or not params:
        return param
    head = re.split(r"[.\[]", param, maxsplit=1)[0]
    if head not in params:
        return param
    return params[head] if param != head else params[param]


async def _sse_after_load(
    worker: WorkerClient, model_id: str, stream: OutputStream, job: Generation, make_reply: Callable[[Admitted], Reply],
    arrived: float, keep_alive: float, rec: RequestRecord,
) -> AsyncIterator[bytes]:
    """An SSE stream whose request waits for its model to load: keep-alive
    comments until the worker admits it (or refuses it: an error event then,
    as the status line is already sent), then the stream as usual."""
    wire = job.wire
    waiting = make_reply(Admitted(wire.request_id, model_id, wire.conversation_id or "",
                                  RequestOutput(wire.request_id), int(time.time())))
    try:
        while (first := await stream.get(keep_alive)) is None:
            if wire.deadline is not None and time.time() > wire.deadline + _DEADLINE_GRACE:
                late = ErrorInfo("request deadline exceeded while its model loaded", type="timeout_error",
                                 code="deadline_exceeded", status=504)
                first = RequestOutput(wire.request_id, finish_reason="error", error=late, usage=Usage())
                worker.abort_nowait(wire.request_id)
                break
            yield waiting.keep_alive()
    except BaseException:  # the client left while it waited
        worker.abort_nowait(wire.request_id)
        raise
    if first.finish_reason == "error":
        worker.release(wire.request_id)
        err = error_from(first, job.params)
        rec.finished(request_id=wire.request_id, conversation_id=wire.conversation_id or "", worker_id=worker.worker_id,
                     model=model_id, out=first, arrived=arrived, status=err.status, refused=True)
        for chunk in (*waiting.open(), *waiting.fail(err)):
            yield chunk
        return
    admitted = Admitted(wire.request_id, model_id, wire.conversation_id or "", first, int(time.time()))
    relay = _Relay(worker, admitted, make_reply(admitted), arrived, wire.deadline, rec=rec, params=job.params)
    async for chunk in relay.sse(stream, keep_alive):
        yield chunk


async def _start(
    pool: WorkerPool,
    job: Generation,
    affinity: str | None,
    tried: list[WorkerClient],
    arrived: float,
    last: APIError | None = None,
    *,
    rec: RequestRecord,
    wait_for_load: bool = True,
) -> tuple[WorkerClient, str, OutputStream, RequestOutput | None]:
    """Choose a worker, send the request and wait for its first output (the
    worker's admission). A worker that is down, full or draining is skipped
    for the next choice: nothing has reached the client yet. ``last``: the
    error to answer with if no other worker is left. Without
    ``wait_for_load``, a request whose model is not in the chosen worker's
    memory yet returns at once, with no first output."""
    wire = job.wire
    while True:
        try:
            worker, model_id = pool.choose(job.model, affinity, exclude=tried)
        except (NoWorkerAvailable, PoolFull) as exc:
            raise last or routing_error(exc) from None
        except UnknownModel as exc:
            raise routing_error(exc) from None
        served = worker.model(model_id)
        context = served.context_length if served is not None else 0  # 0: not known before its first load
        budget = wire.sampling.max_tokens
        if budget is not None and context and budget > context:
            name = job.params.get("max_tokens", "max_tokens")
            raise APIError(
                400,
                f"{name} is {budget}, but this model's context is {context} tokens",
                param=name,
                code="invalid_value",
            )
        wire.model = model_id
        try:
            stream = await worker.submit(wire)
        except WorkerUnavailable as exc:
            tried.append(worker)
            last = APIError(503, f"worker unavailable: {exc}", code="worker_unavailable", headers={"Retry-After": "2"})
            continue
        if not wait_for_load and served is not None and served.state != "loaded":
            return worker, model_id, stream, None
        try:
            first = await _first_output(stream, wire.deadline)
        except BaseException:  # cancelled, or the deadline passed with no admission
            worker.abort_nowait(wire.request_id)
            raise
        if first.finish_reason != "error":
            return worker, model_id, stream, first
        worker.release(wire.request_id)
        err = error_from(first, job.params)
        if first.error is not None and first.error.code in _RETRYABLE:
            log.info("request %s: %s refused it (%s); trying another worker", wire.request_id, worker.worker_id, first.error.code)
            tried.append(worker)
            last = err
            continue
        rec.finished(
            request_id=wire.request_id, conversation_id=wire.conversation_id or "", worker_id=worker.worker_id, model=model_id,
            out=first, arrived=arrived, status=err.status, refused=True,
        )
        err.headers.update(response_headers(wire.request_id, wire.conversation_id, first, worker.worker_id))
        raise err


async def _first_output(stream: OutputStream, deadline: float | None) -> RequestOutput:
    out = await stream.get(None if deadline is None else max(0.0, deadline - time.time()) + _DEADLINE_GRACE)
    if out is None:
        raise APIError(504, "request deadline exceeded before the worker admitted it", code="deadline_exceeded")
    return out


class _Relay:
    """Moves one request's outputs from the worker to the client, and
    makes sure the worker hears about it when the client leaves."""

    def __init__(
        self, worker: WorkerClient, admitted: Admitted, reply: Reply, arrived: float, deadline: float | None, *,
        rec: RequestRecord, params: dict[str, str],
    ):
        self.worker = worker
        self.params = params
        self.admitted = admitted
        self.request_id = admitted.request_id
        self.reply = reply
        self.arrived = arrived
        self.deadline = deadline
        self.retry_error: APIError | None = None  # set when ``collect`` asks for a retry
        self.rec = rec
        self.traced: list[RequestOutput] | None = [] if rec.tracing else None  # streamed outputs, for the trace only

    def _past_deadline(self) -> RequestOutput | None:
        """Backstop for a worker that stops sending without dying: the
        worker expires the deadline itself, so this fires only after a grace."""
        if self.deadline is None or time.time() < self.deadline + _DEADLINE_GRACE:
            return None
        err = ErrorInfo("request deadline exceeded", type="timeout_error", code="deadline_exceeded", status=504)
        return RequestOutput(self.request_id, finish_reason="error", error=err, usage=Usage())

    async def sse(self, stream: OutputStream, keep_alive: float) -> AsyncIterator[bytes]:
        reply = self.reply
        final: RequestOutput | None = None
        timed_out = False
        try:
            for chunk in reply.open():
                yield chunk
            out = self.admitted.first
            while True:
                # Outputs already queued go out as one batch: when the gateway
                # falls behind it writes fewer, larger events instead of lagging.
                batch = [out]
                while out.finish_reason is None and not stream.empty():
                    out = stream.get_nowait()
                    batch.append(out)
                if self.traced is not None:
                    self.traced += batch
                for chunk in reply.delta(batch):
                    yield chunk
                if out.finish_reason is not None:
                    final = _worker_abort_as_error(out)
                    break
                nxt = await stream.get(keep_alive)
                if nxt is None:  # nothing for a while (a long prefill, a busy worker)
                    expired = self._past_deadline()
                    if expired is not None:
                        timed_out = True
                        final = expired
                        break
                    yield reply.keep_alive()  # also reveals a vanished client
                    nxt = RequestOutput(request_id=self.request_id)
                out = nxt
            for chunk in (reply.fail(error_from(final, self.params)) if final.finish_reason == "error" else reply.close(final)):
                yield chunk
        finally:
            if final is None or timed_out:
                self.worker.abort_nowait(self.request_id)
                final = final or RequestOutput(request_id=self.request_id, finish_reason="abort")
            else:
                self.worker.release(self.request_id)
            self._log(final, 200, self.traced)

    async def collect(self, stream: OutputStream, request: Request, headers: dict[str, str]) -> Response | None:
        """The whole answer as one JSON body; ``None`` when the worker failed
        in a way another worker may not (the caller retries elsewhere)."""
        gather = asyncio.create_task(self._gather(stream))
        gone = asyncio.create_task(_client_gone(request))
        timeout = None if self.deadline is None else max(0.0, self.deadline - time.time()) + _DEADLINE_GRACE
        done, _ = await asyncio.wait({gather, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if gather not in done:
            gather.cancel()
            self.worker.abort_nowait(self.request_id)
            if gone in done:
                self._log(RequestOutput(self.request_id, finish_reason="abort"), 499)
                return Response(status_code=499)
            gone.cancel()  # the deadline passed and the worker never finished
            self._log(RequestOutput(self.request_id, finish_reason="error"), 504)
            raise APIError(504, "request deadline exceeded", code="deadline_exceeded", headers=headers)
        gone.cancel()
        self.worker.release(self.request_id)
        outs = gather.result()
        final = _worker_abort_as_error(outs[-1])
        if final.finish_reason == "error" and final.error is not None and final.error.code in _RETRYABLE:
            log.info("request %s: %s failed it (%s); retrying elsewhere", self.request_id, self.worker.worker_id, final.error.code)
            self.retry_error = error_from(final, self.params)
            return None
        if final.finish_reason == "error":
            err = error_from(final, self.params)
            self._log(final, err.status)
            err.headers.update(headers)
            raise err
        self._log(final, 200, outs)
        return JSONResponse(self.reply.body(outs), headers=headers)

    async def _gather(self, stream: OutputStream) -> list[RequestOutput]:
        out = self.admitted.first
        outs = [out]
        while out.finish_reason is None:
            out = await stream.get()  # type: ignore[assignment]  # no timeout: never None
            outs.append(out)
        return outs

    def _log(self, final: RequestOutput, status: int, outs: list[RequestOutput] | None = None) -> None:
        """The request's one log line, metrics and trace entry (request_log.py)."""
        text = {}
        if outs is not None and self.rec.tracing:
            text = {"content": "".join(o.content for o in outs), "reasoning": "".join(o.reasoning for o in outs)}
        a = self.admitted
        self.rec.finished(
            request_id=a.request_id, conversation_id=a.conversation_id, worker_id=self.worker.worker_id, model=a.model,
            out=final, arrived=self.arrived, status=status, **text,
        )


def _worker_abort_as_error(out: RequestOutput) -> RequestOutput:
    """A relay only ever sees ``abort`` when the worker cut the request
    (shutdown past its drain timeout): say so instead of a silent "stop"."""
    if out.finish_reason != "abort":
        return out
    err = ErrorInfo("the worker stopped this request (shutting down)", type="server_error", code="worker_unavailable", status=503)
    return RequestOutput(out.request_id, finish_reason="error", error=err, usage=out.usage)


async def _client_gone(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def joined_text(outs: list[RequestOutput]) -> tuple[str, str]:
    """(content, reasoning) of a batch of outputs."""
    if len(outs) == 1:
        return outs[0].content, outs[0].reasoning
    return "".join(o.content for o in outs), "".join(o.reasoning for o in outs)
