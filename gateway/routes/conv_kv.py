"""`/v1/conv_kv/*`: save, load, list and delete conversation caches.

Each call goes to the worker that owns the conversation (the same routing
as chat requests); `stats` asks every worker and merges the lists.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from ..body import json_object
from ..conversation import validate_conversation_id
from ..errors import APIError
from ..pool import NoWorkerAvailable, UnknownModel, WorkerPool, routing_error
from ..worker_client import WorkerClient, WorkerUnavailable

router = APIRouter(prefix="/v1/conv_kv")


async def _body(request: Request) -> dict[str, Any]:
    return json_object(await request.body() or b"{}")


def _conversation_id(data: dict[str, Any]) -> str:
    for key in ("conversation", "conversation_id"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise APIError(400, f"{key} must be a string", param=key, code="invalid_value")
        if value:
            return validate_conversation_id(value, param=key)
    raise APIError(400, "a conversation id is required (`conversation` or `conversation_id`)", param="conversation", code="missing_conversation_id")


def _model(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise APIError(400, "model must be a string", param="model", code="invalid_value")
    return value or None


def _owners(request: Request, conversation_id: str, model: str | None) -> tuple[list[WorkerClient], str]:
    """The ready workers of the model, the conversation's own worker first
    (the one its chat turns go to: docs/pool.md), then the others, which
    hold its KV only if a turn spilled there; and the served model id
    (a worker may serve several)."""
    pool: WorkerPool = request.app.state.pool
    try:
        owner, model_id = pool.owner(model, conversation_id)
    except (NoWorkerAvailable, UnknownModel) as exc:
        raise routing_error(exc) from None
    return [owner] + [w for w in pool.serving(model_id) if w is not owner], model_id


async def _call_first_holder(workers: list[WorkerClient], method: str, args: dict[str, Any]) -> dict[str, Any]:
    """Ask the owner; on "not found" ask the others; the owner's 404 if none has it."""
    first_error: APIError | None = None
    for w in workers:
        try:
            return await _call(w, method, args)
        except APIError as exc:
            if exc.status != 404:
                raise
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


async def _call(worker: WorkerClient, method: str, args: dict[str, Any]) -> dict[str, Any]:
    try:
        reply = await worker.call(method, args, timeout=120.0)
    except WorkerUnavailable as exc:
        raise APIError(503, f"worker unavailable: {exc}", code="worker_unavailable", headers={"Retry-After": "2"}) from None
    if not reply.ok:
        e = reply.error
        assert e is not None
        raise APIError(e.status, e.message, code=e.code)
    return reply.result


@router.post("/save")
async def save(request: Request) -> dict[str, Any]:
    data = await _body(request)
    conv = _conversation_id(data)
    title = data.get("title")
    if title is not None and (not isinstance(title, str) or len(title) > 512):
        raise APIError(400, "title must be a string of at most 512 characters", param="title", code="invalid_value")
    workers, model_id = _owners(request, conv, _model(data.get("model")))
    return await _call_first_holder(workers, "conv_save", {"conversation_id": conv, "title": title, "model": model_id})


@router.post("/load")
async def load(request: Request) -> dict[str, Any]:
    data = await _body(request)
    conv = _conversation_id(data)
    # Loaded into the worker its next turn goes to.
    workers, model_id = _owners(request, conv, _model(data.get("model")))
    return await _call(workers[0], "conv_load", {"conversation_id": conv, "model": model_id})


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    pool: WorkerPool = request.app.state.pool
    ready = pool.ready  # one snapshot: readiness may change while we wait
    if not ready:
        raise APIError(503, "no worker is ready", code="no_worker", headers={"Retry-After": "2"})
    results = await asyncio.gather(*(_call(w, "conv_stats", {}) for w in ready), return_exceptions=True)
    items: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    for w, r in zip(ready, results):
        if isinstance(r, dict):
            items += [{**i, "worker": w.worker_id} for i in r.get("items", [])]
            memory += [{**i, "worker": w.worker_id} for i in r.get("in_memory", [])]
    return {"items": items, "in_memory": memory}


@router.delete("/{conversation_id}")
async def delete(request: Request, conversation_id: str) -> dict[str, Any]:
    conv = validate_conversation_id(conversation_id, param="conversation_id")
    # Every worker of the model forgets it: a spilled turn may have left a copy.
    workers, model_id = _owners(request, conv, _model(request.query_params.get("model")))
    results = [await _call(w, "conv_delete", {"conversation_id": conv, "model": model_id}) for w in workers]
    return next((r for r in results if r.get("status") == "deleted"), results[0])
