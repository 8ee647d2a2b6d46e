"""`POST /v1/chat/completions`: validate, route to a worker, relay its outputs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from protocol.messages import ChatRequest, RequestOutput, Usage

from ..config import GatewayConfig
from ..conversation import resolve_conversation_id
from ..errors import APIError
from ..pool import NoWorkerAvailable, WorkerPool
from ..responses import ChunkWriter, completion, conversation_headers
from ..schemas import parse_chat_request
from ..worker_client import WorkerClient, WorkerUnavailable

router = APIRouter()
log = logging.getLogger("kmlx.gateway.requests")


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return f"chatcmpl-{uuid.uuid4().hex}"


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
    request_id = _request_id(request)
    conversation_id = resolve_conversation_id(body, request, auto_id=config.conversation_auto_id)
    try:
        worker, model_id = pool.choose(body.model, conversation_id)
    except NoWorkerAvailable as exc:
        raise APIError(503, str(exc), code="no_worker", headers={"Retry-After": "2"}) from None
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
    wire = ChatRequest(
        request_id=request_id,
        messages=body.wire_messages(),
        sampling=body.sampling(),
        strip_thinking=config.strip_thinking if body.strip_thinking is None else body.strip_thinking,
        conversation_id=conversation_id,
        reset_conversation=bool(body.reset_conversation),
        tools=body.tools,
        deadline=time.time() + config.request_timeout if config.request_timeout else None,
    )
    started = time.perf_counter()
    try:
        queue = await worker.submit(wire)
    except WorkerUnavailable as exc:
        raise APIError(503, f"worker unavailable: {exc}", code="worker_unavailable", headers={"Retry-After": "2"}) from None

    first = await queue.get()
    headers = {
        **conversation_headers(conversation_id, first.started),
        "X-Request-Id": request_id,
        "X-Worker-Id": worker.worker_id,
    }
    if first.finish_reason == "error":
        worker.release(request_id)
        _log(request_id, conversation_id, worker, model_id, first, started, status=first.error.status if first.error else 500)
        err = _error_from(first)
        err.headers.update(headers)
        raise err
    relay = _Relay(worker, request_id, model_id, conversation_id, first, started)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            relay.sse(queue, include_usage, config.keep_alive_seconds),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await relay.collect(queue, request, headers)


class _Relay:
    """Moves one request's outputs from the worker queue to the client, and
    makes sure the worker hears about it when the client leaves."""

    def __init__(self, worker: WorkerClient, request_id: str, model: str, conversation_id: str, first: RequestOutput, started: float):
        self.worker = worker
        self.request_id = request_id
        self.model = model
        self.conversation_id = conversation_id
        self.first = first
        self.started = started
        self.created = int(time.time())

    async def sse(self, queue: "asyncio.Queue[RequestOutput]", include_usage: bool, keep_alive: float) -> AsyncIterator[bytes]:
        writer = ChunkWriter(self.request_id, self.model, self.created)
        final: RequestOutput | None = None
        try:
            yield writer.role()
            out = self.first
            while True:
                if out.content or out.reasoning:
                    yield writer.delta(out.content, out.reasoning)
                if out.finish_reason is not None:
                    final = out
                    break
                try:
                    out = await asyncio.wait_for(queue.get(), keep_alive)
                except asyncio.TimeoutError:
                    yield writer.keep_alive()  # also reveals a vanished client
                    out = RequestOutput(request_id=self.request_id)
            if final.finish_reason == "error":
                yield writer.error(_error_from(final).body())
            else:
                yield writer.finish(_finish_reason(final))
                if include_usage:
                    yield writer.usage(final.usage or Usage())
            yield writer.done()
        finally:
            if final is None:
                self.worker.abort_nowait(self.request_id)
                final = RequestOutput(request_id=self.request_id, finish_reason="abort")
            else:
                self.worker.release(self.request_id)
            _log(self.request_id, self.conversation_id, self.worker, self.model, final, self.started, status=200)

    async def collect(self, queue: "asyncio.Queue[RequestOutput]", request: Request, headers: dict[str, str]) -> Response:
        gather = asyncio.create_task(self._gather(queue))
        gone = asyncio.create_task(_client_gone(request))
        await asyncio.wait({gather, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not gather.done():
            gather.cancel()
            self.worker.abort_nowait(self.request_id)
            _log(self.request_id, self.conversation_id, self.worker, self.model, RequestOutput(self.request_id, finish_reason="abort"), self.started, status=499)
            return Response(status_code=499)
        gone.cancel()
        self.worker.release(self.request_id)
        content, reasoning, final = gather.result()
        if final.finish_reason == "error":
            err = _error_from(final)
            _log(self.request_id, self.conversation_id, self.worker, self.model, final, self.started, status=err.status)
            return err.response(headers)
        _log(self.request_id, self.conversation_id, self.worker, self.model, final, self.started, status=200)
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

    async def _gather(self, queue: "asyncio.Queue[RequestOutput]") -> tuple[str, str, RequestOutput]:
        content, reasoning = [self.first.content], [self.first.reasoning]
        out = self.first
        while out.finish_reason is None:
            out = await queue.get()
            content.append(out.content)
            reasoning.append(out.reasoning)
        return "".join(content), "".join(reasoning), out


async def _client_gone(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _finish_reason(out: RequestOutput) -> str:
    return out.finish_reason if out.finish_reason in ("stop", "length", "tool_calls") else "stop"


def _log(request_id: str, conversation_id: str, worker: WorkerClient, model: str, out: RequestOutput, started: float, *, status: int) -> None:
    u = out.usage or Usage()
    log.info(
        json.dumps(
            {
                "event": "request",
                "request_id": request_id,
                "conversation_id": conversation_id,
                "worker": worker.worker_id,
                "model": model,
                "status": status,
                "finish_reason": out.finish_reason,
                "prompt_tokens": u.prompt_tokens,
                "cached_tokens": u.cached_tokens,
                "completion_tokens": u.completion_tokens,
                "ttft_s": round(u.ttft_seconds, 4),
                "total_s": round(time.perf_counter() - started, 4),
                "tokens_per_second": round((u.completion_tokens - 1) / u.decode_seconds, 2) if u.decode_seconds > 0 and u.completion_tokens > 1 else 0.0,
            }
        )
    )
