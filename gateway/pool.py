"""The set of workers behind this gateway, and which one serves a request.

Membership is static (``--worker`` flags or a workers file); health is
dynamic (each ``WorkerClient`` marks itself ready or down), and so is what
each worker serves: a ``--models-dir`` worker lists every model it can load,
and says when one is loaded or unloaded. Requests route by ``model`` first
(to the workers that hold it in memory, else to the one that should load
it), then by the rule in ``gateway/routing.py``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable

from protocol.messages import ModelInfo

from .config import GatewayConfig, WorkerSpec
from .errors import APIError
from .routing import Candidate, pick, rendezvous_order
from .worker_client import QueueLimits, WorkerClient, new_gateway_id

log = logging.getLogger("kmlx.gateway.pool")


class NoWorkerAvailable(Exception):
    """No ready worker serves the requested model (503, retry later)."""


class PoolFull(Exception):
    """Every ready worker of the model has a full queue (503 + Retry-After)."""


class UnknownModel(LookupError):
    """No worker serves this model, and none has a model loaded to stand in (404)."""


def routing_error(exc: NoWorkerAvailable | PoolFull | UnknownModel) -> APIError:
    """The answer to a request no worker can take: 404 for a model nobody
    serves, else a 503 worth retrying (a full pool is refused before any
    expensive work: tokenizing, prefill)."""
    if isinstance(exc, UnknownModel):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, PoolFull):
        return APIError(503, str(exc), code="queue_full", headers={"Retry-After": "1"})
    return APIError(503, str(exc), code="no_worker", headers={"Retry-After": "2"})


class WorkerPool:
    def __init__(
        self,
        workers: Iterable[str | WorkerSpec],
        *,
        default_limits: QueueLimits | None = None,
        spill_factor: float = GatewayConfig.spill_factor,
        ping_interval: float = GatewayConfig.ping_interval,
        ping_timeout: float = GatewayConfig.ping_timeout,
    ):
        self.gateway_id = new_gateway_id()
        self.spill_factor = spill_factor
        base = default_limits or QueueLimits()
        self.workers: list[WorkerClient] = []
        for w in workers:
            spec = w if isinstance(w, WorkerSpec) else WorkerSpec(address=w)
            limits = QueueLimits(
                max_requests=base.max_requests if spec.max_queued_requests is None else spec.max_queued_requests,
                max_tokens=base.max_tokens if spec.max_queued_tokens is None else spec.max_queued_tokens,
            )
            self.workers.append(
                WorkerClient(spec.address, gateway_id=self.gateway_id, limits=limits, ping_interval=ping_interval, ping_timeout=ping_timeout)
            )
        self._rotate = itertools.count()

    @classmethod
    def from_config(cls, config: GatewayConfig) -> WorkerPool:
        return cls(
            config.worker_specs or config.workers,
            default_limits=QueueLimits(config.max_queued_requests, config.max_queued_tokens),
            spill_factor=config.spill_factor,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
        )

    async def start(self) -> None:
        for w in self.workers:
            await w.start()

    async def close(self) -> None:
        for w in self.workers:
            await w.close()

    @property
    def ready(self) -> list[WorkerClient]:
        return [w for w in self.workers if w.ready]

    def models(self) -> dict[str, tuple[WorkerClient, ModelInfo]]:
        """Every model the ready workers serve, each with one worker that
        describes it (one that has it loaded, when any does)."""
        out: dict[str, tuple[WorkerClient, ModelInfo]] = {}
        for w in self.ready:
            for m in w.models():
                if m.id not in out or (m.state == "loaded" and out[m.id][1].state != "loaded"):
                    out[m.id] = (w, m)
        return out

    def resolve_model(self, model: str | None) -> str:
        """The served model id for a request's ``model``.

        A model some worker serves (or served before it went down) is
        honoured; anything else (clients often send a placeholder such as
        "gpt-4") maps to a model loaded on the first ready worker, as
        single-model kamiwaza-mlx did. With nothing loaded anywhere (a
        models dir nobody has used yet) an unknown name is a 404.
        """
        known = {m.id for w in self.workers for m in w.models()}
        if model in known:
            return model
        ready = self.ready
        if not ready:
            raise NoWorkerAvailable(self._why_none())
        fallback = next((m.id for w in ready for m in w.models() if m.state == "loaded"), None)
        if fallback is None:
            served = ", ".join(sorted(known)) or "none"
            raise UnknownModel(f"The model '{model}' is not served here (served: {served})")
        if model:
            log.warning("model %r is not served here; using %s", model, fallback)
        return fallback

    def serving(self, model_id: str) -> list[WorkerClient]:
        """Ready workers that can serve one model, in configuration order:
        the ones that have it in memory (or are loading it), if any; else all."""
        able = [w for w in self.workers if w.ready and w.model(model_id) is not None]
        warm = [w for w in able if w.model(model_id).state in ("loaded", "loading")]  # type: ignore[union-attr]
        if warm or len(able) < 2:
            return warm or able
        # Nobody has it: the worker every gateway would pick (rendezvous on the
        # model id) loads it, so two gateways do not load it twice.
        return [able[rendezvous_order(model_id, [w.worker_id for w in able])[0]]]

    def choose(
        self, model: str | None, conversation_id: str | None, *, exclude: Iterable[WorkerClient] = ()
    ) -> tuple[WorkerClient, str]:
        """Pick a worker: ``(worker, served model id)``.

        With a ``conversation_id`` the conversation's own worker is chosen
        (rendezvous hashing: every gateway agrees with no shared state),
        unless it is far busier than the mean or its queue is full, when the
        next-ranked worker takes the turn (it re-prefills the conversation).
        Without one, the least-loaded worker. ``exclude``: workers that
        already failed this request. Raises ``NoWorkerAvailable`` or
        ``PoolFull``.
        """
        model_id = self.resolve_model(model)
        skip = set(map(id, exclude))
        workers = [w for w in self.serving(model_id) if id(w) not in skip]
        if not workers:  # the one chosen to load it failed this request: any other may load it
            workers = [w for w in self.workers if w.ready and w.model(model_id) is not None and id(w) not in skip]
        if not workers:
            raise NoWorkerAvailable(f"no worker for model {model_id} is ready ({self._why_none(model_id)})")
        full = [w.queue_full() for w in workers]
        cands = [
            Candidate(w.worker_id, w.load(), w.state.info.max_running if w.state.info else 0, reason is not None)
            for w, reason in zip(workers, full)
        ]
        picked = pick(cands, conversation_id, spill_factor=self.spill_factor, rotate=next(self._rotate))
        if picked is None:
            reasons = "; ".join(f"{w.worker_id}: {r}" for w, r in zip(workers, full))
            raise PoolFull(f"every worker of {model_id} is at its queue limit ({reasons})")
        i, spilled = picked
        if spilled:
            log.info("conversation %s spills to %s (its worker is busy or full)", conversation_id, workers[i].worker_id)
        return workers[i], model_id

    def owner(self, model: str | None, conversation_id: str) -> tuple[WorkerClient, str]:
        """The worker a conversation's turns go to when nothing spills: the
        one holding its KV (for the conversation endpoints, no load rule)."""
        model_id = self.resolve_model(model)
        workers = self.serving(model_id)
        if not workers:
            raise NoWorkerAvailable(f"no worker for model {model_id} is ready ({self._why_none(model_id)})")
        return workers[rendezvous_order(conversation_id, [w.worker_id for w in workers])[0]], model_id

    def _why_none(self, model_id: str | None = None) -> str:
        ws = [w for w in self.workers if model_id is None or w.model(model_id) is not None]
        return "; ".join(f"{w.address}: {w.state.reason}" for w in ws) or "none configured"
