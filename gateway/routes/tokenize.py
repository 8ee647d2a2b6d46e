"""`POST /tokenize` and `POST /detokenize`, in vLLM's shape.

``{"model", "prompt"}`` or ``{"model", "messages"}`` ->
``{"tokens", "count", "max_model_len"}``; ``{"model", "tokens"}`` ->
``{"prompt"}``. Answered by a worker of the model (a control call), with its
own tokenizer and chat template: the counts are the ones generation uses.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ..agent_fields import FunctionTool, check_template_kwargs
from ..body import json_object, validate
from ..errors import APIError
from ..pool import NoWorkerAvailable, PoolFull, UnknownModel, WorkerPool, routing_error
from ..schemas import UNION_TAGS, Message
from ..worker_client import WorkerUnavailable

router = APIRouter()


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TokenizeRequest(_Strict):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    add_special_tokens: bool = True
    tools: list[FunctionTool] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)


@router.post("/tokenize")
async def tokenize(request: Request) -> dict[str, Any]:
    body = validate(TokenizeRequest, json_object(await request.body()), tags=UNION_TAGS)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give either prompt or messages", param="prompt", code="invalid_value")
    try:
        check_template_kwargs(body.chat_template_kwargs)
    except ValueError as exc:
        raise APIError(400, f"chat_template_kwargs: {exc}", param="chat_template_kwargs", code="invalid_value") from None
    args: dict[str, Any] = {"add_special_tokens": body.add_special_tokens}
    if body.prompt is not None:
        args["prompt"] = body.prompt
    else:
        args["messages"] = [m.model_dump(exclude_none=True) for m in body.messages or []]
        args["tools"] = [t.wire() for t in body.tools] if body.tools else None
        args["chat_template_kwargs"] = body.chat_template_kwargs
    return await call_any_worker(request, body.model, "tokenize", args)


@router.post("/detokenize")
async def detokenize(request: Request) -> dict[str, Any]:
    body = validate(DetokenizeRequest, json_object(await request.body()))
    return await call_any_worker(request, body.model, "detokenize", {"tokens": body.tokens}, param="tokens")


async def call_any_worker(request: Request, model: str | None, method: str, args: dict[str, Any], *, param: str | None = None) -> dict[str, Any]:
    """A control call on the least-loaded worker of ``model``; its refusal
    is a 4xx naming ``param``."""
    pool: WorkerPool = request.app.state.pool
    try:
        worker, model_id = pool.choose(model, None)
    except (NoWorkerAvailable, PoolFull, UnknownModel) as exc:
        raise routing_error(exc) from None
    try:
        reply = await worker.call(method, {**args, "model": model_id}, timeout=60.0)
    except WorkerUnavailable as exc:
        raise APIError(503, f"worker unavailable: {exc}", code="worker_unavailable", headers={"Retry-After": "2"}) from None
    if not reply.ok:
        e = reply.error
        assert e is not None
        raise APIError(e.status, e.message, code=e.code, param=param)
    return reply.result
