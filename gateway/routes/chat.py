"""`POST /v1/chat/completions`: validate, route to a worker, relay its outputs."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from protocol import codec
from protocol.messages import ChatRequest, ErrorInfo, RequestOutput, Usage

from ..config import GatewayConfig
from ..conversation import resolve_conversation_id
from ..errors import APIError
from ..limits import check_request_limits
from ..media import wire_messages_with_media
from ..pool import NoWorkerAvailable, PoolFull, WorkerPool
from ..request_log import RequestRecord
from ..responses import ChunkWriter, completion, conversation_headers
from ..schemas import ChatCompletionRequest, parse_chat_request
from ..output_stream import OutputStream
from ..worker_client import WorkerClient, WorkerUnavailable

router = APIRouter()
log = logging.getLogger("kmlx.gateway.requests")


def _request_id(request: Request) -> str:
    # The request-id middleware (access.py) kept a sane client X-Request-Id;
    # without one a completion gets OpenAI's id shape, echoed as X-Request-Id.
    state = request.state
    rid = state.request_id if getattr(state, "request_id_given", False) else f"chatcmpl-{uuid.uuid4().hex}"
    state.request_id = rid
    return rid


def _error_from(out: RequestOutput) -> APIError:
    e = out.error
    assert e is not None
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return APIError(e.status, e.message, type=e.type, param=e.param, code=e.code, headers=headers)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    config: GatewayConfig = request.app.state.config
    pool: WorkerPool = request.app.state.pool
    if request.app.state.draining:
        raise APIError(503, "gateway is shutting down", code="shutting_down", headers={"Retry-After": "5"})
    body = parse_chat_request(await request.body())
    check_request_limits(body, config.ops, allow_local_media=bool(config.media.allow_local_dirs))
    messages = await wire_messages_with_media(pool, body, config)  # 4xx for bad media, before any worker
    request_id = _request_id(request)
    conversation_id = resolve_conversation_id(body, request, auto_id=config.conversation_auto_id)
    deadline = time.time() + config.request_timeout if config.request_timeout else None
    wire = ChatRequest(
        request_id=request_id,
        messages=messages,
        sampling=body.sampling(),
        strip_thinking=config.strip_thinking if body.strip_thinking is None else body.strip_thinking,
        conversation_id=conversation_id,
        reset_conversation=bool(body.reset_conversation),
        tools=body.tools,
        deadline=deadline,
    )
    _ensure_encodable(wire)
    # A reset turn neither uses nor updates the conversation's KV, so it
    # needs no particular worker: it goes to the least-loaded one.
    affinity = None if body.reset_conversation else conversation_id
    tried: list[WorkerClient] = []
    retry_error: APIError | None = None
    started = time.perf_counter()
    rec: RequestRecord = request.app.state.request_log.record(request)
    while True:
        worker, model_id, queue, first = await _start(pool, body, wire, affinity, tried, started, retry_error, rec=rec)
        rec.submitted(wire, worker_id=worker.worker_id, model=model_id)
        headers = {
            **conversation_headers(conversation_id, first.started),
            "X-Request-Id": request_id,
            "X-Worker-Id": worker.worker_id,
        }
        relay = _Relay(worker, request_id, model_id, conversation_id, first, started, deadline, rec=rec)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                relay.sse(queue, include_usage, config.keep_alive_seconds),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        response = await relay.collect(queue, request, headers)
        if response is not None:
            return response
        # The worker failed mid-generation, but a non-streamed answer has not
        # sent a byte yet: run the whole request again on another worker.
        tried.append(worker)
        retry_error = relay.retry_error


def _ensure_encodable(wire: ChatRequest) -> None:
    """JSON allows what MessagePack cannot carry (integers past 64 bits, lone
    UTF-16 surrogates), e.g. deep inside free-form `tools`: refuse it here as
    the client's error rather than fail later as a server error."""
    try:
        codec.encode(wire)
    except (OverflowError, UnicodeEncodeError) as exc:
        reason = "an integer is too large" if isinstance(exc, OverflowError) else "a string is not valid Unicode"
        raise APIError(400, f"the request cannot be processed: {reason}", code="invalid_value") from None


# Failures that are the worker's, not the request's: another worker may succeed.
_RETRYABLE = frozenset({"worker_unavailable", "queue_full", "shutting_down"})
_DEADLINE_GRACE = 5.0  # the worker expires requests itself; the gateway only backs it up


async def _start(
    pool: WorkerPool,
    body: ChatCompletionRequest,
    wire: ChatRequest,
    affinity: str | None,
    tried: list[WorkerClient],
    started: float,
    last: APIError | None = None,
    *,
    rec: RequestRecord,
) -> tuple[WorkerClient, str, OutputStream, RequestOutput]:
    """Choose a worker, send the request and wait for its first output (the
    worker's admission). A worker that is down, full or draining is skipped
    for the next choice: nothing has reached the client yet. ``last``: the
    error to answer with if no other worker is left."""
    while True:
        try:
            worker, model_id = pool.choose(body.model, affinity, exclude=tried)
        except NoWorkerAvailable as exc:
            raise last or APIError(503, str(exc), code="no_worker", headers={"Retry-After": "2"}) from None
        except PoolFull as exc:
            # Refused before any expensive work (tokenizing, prefill).
            raise last or APIError(503, str(exc), code="queue_full", headers={"Retry-After": "1"}) from None
        info = worker.state.info
        assert info is not None
        budget = body.completion_budget()
        if budget is not None and budget > info.context_length:
            raise APIError(
                400,
                f"max_tokens is {budget}, but this model's context is {info.context_length} tokens",
                param="max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
                code="invalid_value",
            )
        try:
            queue = await worker.submit(wire)
        except WorkerUnavailable as exc:
            tried.append(worker)
            last = APIError(503, f"worker unavailable: {exc}", code="worker_unavailable", headers={"Retry-After": "2"})
            continue
        try:
            first = await _first_output(queue, wire.deadline)
        except BaseException:  # cancelled, or the deadline passed with no admission
            worker.abort_nowait(wire.request_id)
            raise
        if first.finish_reason != "error":
            return worker, model_id, queue, first
        worker.release(wire.request_id)
        err = _error_from(first)
        if first.error is not None and first.error.code in _RETRYABLE:
            log.info("request %s: %s refused it (%s); trying another worker", wire.request_id, worker.worker_id, first.error.code)
            tried.append(worker)
            last = err
            continue
        _log(rec, wire.request_id, wire.conversation_id or "", worker, model_id, first, started, status=err.status, refused=True)
        err.headers.update(
            {**conversation_headers(wire.conversation_id, first.started), "X-Request-Id": wire.request_id, "X-Worker-Id": worker.worker_id}
        )
        raise err


async def _first_output(queue: OutputStream, deadline: float | None) -> RequestOutput:
    out = await queue.get(None if deadline is None else max(0.0, deadline - time.time()) + _DEADLINE_GRACE)
    if out is None:
        raise APIError(504, "request deadline exceeded before the worker admitted it", code="deadline_exceeded")
    return out


class _Relay:
    """Moves one request's outputs from the worker queue to the client, and
    makes sure the worker hears about it when the client leaves."""

    def __init__(
        self, worker: WorkerClient, request_id: str, model: str, conversation_id: str, first: RequestOutput, started: float,
        deadline: float | None = None, *, rec: RequestRecord,
    ):
        self.worker = worker
        self.request_id = request_id
        self.model = model
        self.conversation_id = conversation_id
        self.first = first
        self.started = started
        self.deadline = deadline
        self.created = int(time.time())
        self.retry_error: APIError | None = None  # set when ``collect`` asks for a retry
        self.rec = rec
        self.text: tuple[list[str], list[str]] | None = ([], []) if rec.tracing else None  # streamed text, for the trace only

    def _past_deadline(self) -> RequestOutput | None:
        """Backstop for a worker that stops sending without dying: the
        worker expires the deadline itself, so this fires only after a grace."""
        if self.deadline is None or time.time() < self.deadline + _DEADLINE_GRACE:
            return None
        err = ErrorInfo("request deadline exceeded", type="timeout_error", code="deadline_exceeded", status=504)
        return RequestOutput(self.request_id, finish_reason="error", error=err, usage=Usage())

    async def sse(self, queue: OutputStream, include_usage: bool, keep_alive: float) -> AsyncIterator[bytes]:
        writer = ChunkWriter(self.request_id, self.model, self.created)
        final: RequestOutput | None = None
        timed_out = False
        try:
            yield writer.role()
            out = self.first
            while True:
                # Outputs already queued go out as one chunk: when the gateway
                # falls behind it writes fewer, larger chunks instead of lagging.
                content, reasoning = out.content, out.reasoning
                while out.finish_reason is None and not queue.empty():
                    out = queue.get_nowait()
                    content += out.content
                    reasoning += out.reasoning
                if content or reasoning:
                    if self.text is not None:
                        self.text[0].append(content)
                        self.text[1].append(reasoning)
                    yield writer.delta(content, reasoning)
                if out.finish_reason is not None:
                    final = _worker_abort_as_error(out)
                    break
                nxt = await queue.get(keep_alive)
                if nxt is None:  # nothing for a while (a long prefill, a busy worker)
                    expired = self._past_deadline()
                    if expired is not None:
                        timed_out = True
                        final = expired
                        break
                    yield writer.keep_alive()  # also reveals a vanished client
                    nxt = RequestOutput(request_id=self.request_id)
                out = nxt
            if final.finish_reason == "error":
                yield writer.error(_error_from(final).body())
            else:
                yield writer.finish(_finish_reason(final))
                if include_usage:
                    yield writer.usage(final.usage or Usage())
            yield writer.done()
        finally:
            if final is None or timed_out:
                self.worker.abort_nowait(self.request_id)
                final = final or RequestOutput(request_id=self.request_id, finish_reason="abort")
            else:
                self.worker.release(self.request_id)
            text = {"content": "".join(self.text[0]), "reasoning": "".join(self.text[1])} if self.text is not None else {}
            _log(self.rec, self.request_id, self.conversation_id, self.worker, self.model, final, self.started, status=200, **text)

    async def collect(self, queue: OutputStream, request: Request, headers: dict[str, str]) -> Response | None:
        """The whole answer as one JSON body; ``None`` when the worker failed
        in a way another worker may not (the caller retries elsewhere)."""
        gather = asyncio.create_task(self._gather(queue))
        gone = asyncio.create_task(_client_gone(request))
        timeout = None if self.deadline is None else max(0.0, self.deadline - time.time()) + _DEADLINE_GRACE
        done, _ = await asyncio.wait({gather, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if gather not in done:
            gather.cancel()
            self.worker.abort_nowait(self.request_id)
            if gone in done:
                _log(self.rec, self.request_id, self.conversation_id, self.worker, self.model, RequestOutput(self.request_id, finish_reason="abort"), self.started, status=499)
                return Response(status_code=499)
            gone.cancel()  # the deadline passed and the worker never finished
            _log(self.rec, self.request_id, self.conversation_id, self.worker, self.model, RequestOutput(self.request_id, finish_reason="error"), self.started, status=504)
            return APIError(504, "request deadline exceeded", code="deadline_exceeded").response(headers)
        gone.cancel()
        self.worker.release(self.request_id)
        content, reasoning, final = gather.result()
        final = _worker_abort_as_error(final)
        if final.finish_reason == "error" and final.error is not None and final.error.code in _RETRYABLE:
            log.info("request %s: %s failed it (%s); retrying elsewhere", self.request_id, self.worker.worker_id, final.error.code)
            self.retry_error = _error_from(final)
            return None
        if final.finish_reason == "error":
            err = _error_from(final)
            _log(self.rec, self.request_id, self.conversation_id, self.worker, self.model, final, self.started, status=err.status)
            return err.response(headers)
        _log(self.rec, self.request_id, self.conversation_id, self.worker, self.model, final, self.started, status=200,
             content=content, reasoning=reasoning)
        body = completion(
            request_id=self.request_id,
            model=self.model,
            created=self.created,
            content=content,
            reasoning=reasoning,
            finish_reason=_finish_reason(final),
            usage=final.usage or Usage(),
            conversation_id=self.conversation_id,
        )
        return JSONResponse(body, headers=headers)

    async def _gather(self, queue: OutputStream) -> tuple[str, str, RequestOutput]:
        content, reasoning = [self.first.content], [self.first.reasoning]
        out = self.first
        while out.finish_reason is None:
            out = await queue.get()  # type: ignore[assignment]  # no timeout: never None
            content.append(out.content)
            reasoning.append(out.reasoning)
        return "".join(content), "".join(reasoning), out


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


def _finish_reason(out: RequestOutput) -> str:
    return out.finish_reason if out.finish_reason in ("stop", "length", "tool_calls") else "stop"


def _log(
    rec: RequestRecord, request_id: str, conversation_id: str, worker: WorkerClient, model: str, out: RequestOutput,
    started: float, *, status: int, refused: bool = False, content: str | None = None, reasoning: str | None = None,
) -> None:
    """The request's one log line, metrics and trace entry (request_log.py)."""
    rec.finished(
        request_id=request_id, conversation_id=conversation_id, worker_id=worker.worker_id, model=model, out=out,
        started=started, status=status, refused=refused, content=content, reasoning=reasoning,
    )
