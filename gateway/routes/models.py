"""`GET /v1/models[/{id}]`, `POST /v1/models/{id}/load|unload`, `GET /health`,
`GET /v1/stats`: what the pool serves, what is in memory, and how it is."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from protocol.messages import ModelInfo

from ..errors import APIError
from ..pool import WorkerPool
from ..worker_client import WorkerClient, WorkerUnavailable

# A POST .../load answers when the model is in memory; a big GGUF converting
# on a CPU can take minutes.
LOAD_TIMEOUT = 1800.0

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every model of every ready worker; ``loaded`` says whether one has it in memory."""
    pool: WorkerPool = request.app.state.pool
    return {"object": "list", "data": [_model_object(w, m) for w, m in pool.models().values()]}


@router.post("/v1/models/{model_id:path}/load")
async def load_model(model_id: str, request: Request) -> dict[str, Any]:
    """Load a model now (into the worker its requests would load it into);
    answered once it is in memory."""
    pool: WorkerPool = request.app.state.pool
    _served(pool, model_id)
    workers = pool.serving(model_id)
    if not workers:
        raise APIError(503, f"no worker for model {model_id} is ready", code="no_worker", headers={"Retry-After": "2"})
    result = await _control(workers[0], "model_load", model_id, timeout=LOAD_TIMEOUT)
    return _model_object(workers[0], msgspec.convert(result, ModelInfo))


@router.post("/v1/models/{model_id:path}/unload")
async def unload_model(model_id: str, request: Request) -> dict[str, Any]:
    """Unload a model from every worker that has it in memory (409 while one is using it)."""
    pool: WorkerPool = request.app.state.pool
    worker, info = _served(pool, model_id)
    for w in [w for w in pool.ready if (m := w.model(model_id)) is not None and m.state == "loaded"]:
        worker, info = w, msgspec.convert(await _control(w, "model_unload", model_id, timeout=60.0), ModelInfo)
    return _model_object(worker, info)


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    """One served model (ids may hold slashes: ``mlx-community/...``)."""
    return _model_object(*_served(request.app.state.pool, model_id))


def _served(pool: WorkerPool, model_id: str) -> tuple[WorkerClient, ModelInfo]:
    found = pool.models().get(model_id)
    if found is None:
        raise APIError(404, f"The model '{model_id}' does not exist or is not served here", type="invalid_request_error",
                       param="model", code="model_not_found")
    return found


async def _control(worker: WorkerClient, method: str, model_id: str, *, timeout: float) -> dict[str, Any]:
    try:
        reply = await worker.call(method, {"model": model_id}, timeout=timeout)
    except WorkerUnavailable as exc:
        raise APIError(503, f"worker unavailable: {exc}", code="worker_unavailable", headers={"Retry-After": "2"}) from None
    if not reply.ok:
        e = reply.error
        assert e is not None
        raise APIError(e.status, e.message, type=e.type, param=e.param, code=e.code)
    return reply.result


def _model_object(worker: WorkerClient, model: ModelInfo) -> dict[str, Any]:
    info = worker.state.info
    assert info is not None
    return {"id": model.id, "object": "model", "created": info.created, "owned_by": "kmlx",
            "loaded": model.state == "loaded"}


@router.api_route("/health", methods=["GET", "HEAD"])  # load balancers probe with HEAD
async def health(request: Request) -> JSONResponse:
    pool: WorkerPool = request.app.state.pool
    workers = [
        {
            "address": w.address,
            "worker_id": w.worker_id,
            "ready": w.ready,
            "state": w.state.reason,
            "model": w.state.info.model_id if w.state.info else None,
            "context_length": w.state.info.context_length if w.state.info else None,
            "models": {m.id: m.state for m in w.models()},
            "inflight": w.state.inflight,
            "load": w.load(),
            "queued_requests": w.queued()[0],
            "queued_tokens": w.queued()[1],
            "queue_full": w.queue_full(),
        }
        for w in pool.workers
    ]
    if request.app.state.draining:
        return JSONResponse({"status": "draining", "workers": workers}, status_code=503)
    if not pool.ready:
        reason = "; ".join(f"{w['address']}: {w['state']}" for w in workers)
        return JSONResponse({"status": "unavailable", "reason": f"no worker is ready ({reason})", "workers": workers}, status_code=503)
    return JSONResponse({"status": "ok", "workers": workers})


@router.get("/v1/stats")
async def stats(request: Request) -> dict[str, Any]:
    """Each worker's own counters (asked through its compute loop), and their
    sums over the pool (``total``) and per served model (``models``)."""
    pool: WorkerPool = request.app.state.pool

    async def one(w: WorkerClient) -> dict[str, Any]:
        if not w.ready:
            return {"address": w.address, "ready": False, "error": w.state.reason}
        try:
            reply = await w.call("stats", timeout=5.0)
            return {"address": w.address, "ready": True, **reply.result}
        except WorkerUnavailable as exc:
            return {"address": w.address, "ready": False, "error": str(exc)}

    results = list(await asyncio.gather(*(one(w) for w in pool.workers)))
    ready = [r for r in results if r["ready"]]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in ready:
        per_model = r.get("models")  # a worker serving several models reports each one
        if isinstance(per_model, dict) and len(per_model) > 1:
            for model_id, row in per_model.items():
                by_model.setdefault(model_id, []).append(row)
        else:
            by_model.setdefault(str(r.get("model")), []).append(r)
    return {
        "workers": results,
        "total": sum_counters(ready),
        "models": {m: sum_counters(rs) for m, rs in by_model.items()},
    }


def sum_counters(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Numeric fields added up across workers, nested dicts (e.g. cache
    stats) field by field; strings, flags and uptimes are left out."""
    out: dict[str, Any] = {"workers": len(rows)}
    for row in rows:
        _add_into(out, row)
    cache = out.get("kv_cache")
    if isinstance(cache, dict) and "hit_rate" in cache:  # a ratio: recomputed from the sums, not added
        cache["hit_rate"] = round(cache.get("hits", 0) / cache["requests"], 4) if cache.get("requests") else 0.0
    return out


def _add_into(out: dict[str, Any], row: dict[str, Any]) -> None:
    for k, v in row.items():
        if k == "uptime_seconds" or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = out.get(k, 0) + v
        elif isinstance(v, dict):
            sub = out.setdefault(k, {})
            if isinstance(sub, dict):
                _add_into(sub, v)
