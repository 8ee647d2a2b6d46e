"""The set of workers behind this gateway, and which one serves a request."""

from __future__ import annotations

import hashlib
import logging

from .worker_client import WorkerClient, new_gateway_id

log = logging.getLogger("kmlx.gateway.pool")


class NoWorkerAvailable(Exception):
    pass


def _rendezvous_score(key: str, worker_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\x00{worker_id}".encode(), digest_size=8).digest(), "big")


class WorkerPool:
    def __init__(self, addresses: list[str]):
        self.gateway_id = new_gateway_id()
        self.workers = [WorkerClient(a, gateway_id=self.gateway_id) for a in addresses]

    async def start(self) -> None:
        for w in self.workers:
            await w.start()

    async def close(self) -> None:
        for w in self.workers:
            await w.close()

    @property
    def ready(self) -> list[WorkerClient]:
        return [w for w in self.workers if w.ready]

    def models(self) -> dict[str, WorkerClient]:
        """Served model ids, each with one ready worker that describes it."""
        out: dict[str, WorkerClient] = {}
        for w in self.ready:
            assert w.state.info is not None
            out.setdefault(w.state.info.model_id, w)
        return out

    def choose(self, model: str | None, conversation_id: str | None) -> tuple[WorkerClient, str]:
        """Pick a worker: ``(worker, served model id)``.

        A conversation always maps to the same worker while the set of healthy
        workers is unchanged (rendezvous hashing: no shared state needed
        between gateways). Other requests go to the least-loaded worker.
        """
        ready = self.ready
        if not ready:
            reasons = "; ".join(f"{w.address}: {w.state.reason}" for w in self.workers)
            raise NoWorkerAvailable(f"no worker is ready ({reasons})")
        candidates = [w for w in ready if w.state.info and w.state.info.model_id == model]
        if not candidates:
            if model:
                log.warning("model %r is not served here; using %s", model, ready[0].state.info.model_id)  # type: ignore[union-attr]
            first_model = ready[0].state.info.model_id  # type: ignore[union-attr]
            candidates = [w for w in ready if w.state.info and w.state.info.model_id == first_model]
        if conversation_id:
            chosen = max(candidates, key=lambda w: _rendezvous_score(conversation_id, w.worker_id))
        else:
            chosen = min(candidates, key=lambda w: (w.state.inflight + w.state.load.waiting, w.state.load.running))
        return chosen, chosen.state.info.model_id  # type: ignore[union-attr]

    def by_id(self, worker_id: str) -> WorkerClient | None:
        return next((w for w in self.workers if w.worker_id == worker_id), None)
