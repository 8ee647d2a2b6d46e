"""Prometheus metrics for the gateway, served at ``GET /metrics``.

Names follow vLLM's (``vllm:`` -> ``kmlx:``) so existing dashboards adapt by
changing the prefix. Request durations come from the worker's own clock
(``Usage``: ttft, queue, decode), so no cross-host clock is compared; only
the end-to-end latency is the gateway's (its own start and end).

Gauges (running, waiting, KV tokens, worker up) are read at scrape time from
each worker's last load report, which rides on every ``StepOutputs`` and
ping reply. Conversation-cache gauges come from each worker's ``stats``
control call, asked once per scrape with a short timeout (a worker busy in
a long compute step is left out of that scrape rather than stalling it).

Everything lives in a registry owned by one app, not prometheus-client's
global one, so nothing happens at import time and two apps never clash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from protocol.messages import Usage

if TYPE_CHECKING:
    from .pool import WorkerPool

router = APIRouter()

# Bucket edges in seconds: from a fast local GPU-class TTFT up to the very
# long prefills a CPU or a big context can take.
_TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
_TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_LATENCY_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000)

_SUCCESS_REASONS = ("stop", "length", "tool_calls")


class Metrics:
    def __init__(self, pool: WorkerPool | None = None):
        disable_created_metrics()  # no *_created series (process-wide switch; as vLLM does)
        self.registry = CollectorRegistry(auto_describe=True)
        r, m = self.registry, ["model_name"]
        self.ttft = Histogram("kmlx:time_to_first_token_seconds", "Worker admission to first token.", m, buckets=_TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("kmlx:time_per_output_token_seconds", "Mean time between output tokens of a request (decode time / (tokens - 1)).", m, buckets=_TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("kmlx:e2e_request_latency_seconds", "Gateway-measured time from request to last byte.", m, buckets=_LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("kmlx:request_queue_time_seconds", "Worker admission to prefill start.", m, buckets=_LATENCY_BUCKETS, registry=r)
        self.prefill = Histogram("kmlx:request_prefill_time_seconds", "Prefill start to first token.", m, buckets=_LATENCY_BUCKETS, registry=r)
        self.decode = Histogram("kmlx:request_decode_time_seconds", "First token to last token.", m, buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_hist = Histogram("kmlx:request_prompt_tokens", "Prompt tokens per request.", m, buckets=_TOKEN_BUCKETS, registry=r)
        self.generation_hist = Histogram("kmlx:request_generation_tokens", "Generated tokens per request.", m, buckets=_TOKEN_BUCKETS, registry=r)
        self.prompt_tokens = Counter("kmlx:prompt_tokens", "Prompt tokens of finished requests (cached ones included).", m, registry=r)
        self.generation_tokens = Counter("kmlx:generation_tokens", "Generated tokens of finished requests.", m, registry=r)
        self.cached_tokens = Counter("kmlx:prompt_tokens_cached", "Prompt tokens served from a KV cache instead of prefilled.", m, registry=r)
        self.success = Counter("kmlx:request_success", "Requests that finished normally, by finish reason.", m + ["finished_reason"], registry=r)
        self.aborted = Counter("kmlx:request_aborted", "Requests ended early: the client left or the gateway cut them on shutdown.", m, registry=r)
        self.failed = Counter("kmlx:request_failed", "Requests that failed after admission, by error code.", m + ["code"], registry=r)
        self.rejected = Counter("kmlx:admission_rejections", "Requests refused before any work (queue full, no worker, shutting down, ...).", ["reason"], registry=r)
        self._pool_collector = _PoolCollector(pool) if pool is not None else None
        if self._pool_collector is not None:
            self.registry.register(self._pool_collector)

    # ------------------------------------------------------------------ #
    def observe(self, *, model: str, finish_reason: str | None, usage: Usage, total_seconds: float, error_code: str | None, refused: bool) -> None:
        """Account one finished request (called once per request, from the request log)."""
        if refused:
            self.rejected.labels(error_code or "refused").inc()
            return
        u = usage
        if u.completion_tokens > 0:
            self.ttft.labels(model).observe(u.ttft_seconds)
            self.queue.labels(model).observe(u.queue_seconds)
            self.prefill.labels(model).observe(max(0.0, u.ttft_seconds - u.queue_seconds))
        if u.completion_tokens > 1 and u.decode_seconds > 0:
            self.tpot.labels(model).observe(u.decode_seconds / (u.completion_tokens - 1))
            self.decode.labels(model).observe(u.decode_seconds)
        self.prompt_tokens.labels(model).inc(u.prompt_tokens)
        self.generation_tokens.labels(model).inc(u.completion_tokens)
        self.cached_tokens.labels(model).inc(u.cached_tokens)
        if finish_reason in _SUCCESS_REASONS:
            self.success.labels(model, finish_reason).inc()
            self.e2e.labels(model).observe(total_seconds)
            self.prompt_hist.labels(model).observe(u.prompt_tokens)
            self.generation_hist.labels(model).observe(u.completion_tokens)
        elif finish_reason == "abort":
            self.aborted.labels(model).inc()
        else:
            self.failed.labels(model, error_code or "error").inc()

    def reject(self, reason: str) -> None:
        """A request the gateway refused before choosing or reaching a worker."""
        self.rejected.labels(reason).inc()

    async def refresh(self, timeout: float = 1.0) -> None:
        """Ask every ready worker for its stats (cache sizes) before a scrape."""
        if self._pool_collector is not None:
            await self._pool_collector.refresh(timeout)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    """Per-worker gauges, read from the pool when Prometheus scrapes."""

    def __init__(self, pool: WorkerPool):
        self.pool = pool
        self.stats: dict[str, dict[str, Any]] = {}  # worker id -> last ``stats`` reply

    async def refresh(self, timeout: float) -> None:
        async def one(w: Any) -> tuple[str, dict[str, Any] | None]:
            try:
                reply = await w.call("stats", timeout=timeout)
            except Exception:  # down or busy: no cache gauges this scrape
                return w.worker_id, None
            return w.worker_id, reply.result if reply.ok else None

        results = await asyncio.gather(*(one(w) for w in self.pool.workers if w.ready))
        self.stats = {wid: r for wid, r in results if r is not None}

    def describe(self) -> list:
        return []  # dynamic: don't call collect() at registration time

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["worker", "model_name"]
        up = GaugeMetricFamily("kmlx:worker_up", "1 if the gateway has a live, handshaken link to the worker.", labels=labels + ["address"])
        running = GaugeMetricFamily("kmlx:num_requests_running", "Requests decoding on the worker.", labels=labels)
        waiting = GaugeMetricFamily("kmlx:num_requests_waiting", "Requests admitted but not yet decoding (queued or prefilling).", labels=labels)
        kv = GaugeMetricFamily("kmlx:kv_cache_tokens", "Tokens held in the KV cache of running and waiting requests.", labels=labels)
        inflight = GaugeMetricFamily("kmlx:gateway_requests_inflight", "This gateway's open requests on the worker.", labels=labels)
        conv_tokens = GaugeMetricFamily("kmlx:conversation_cache_tokens", "Tokens held in the worker's conversation caches.", labels=labels)
        conv_bytes = GaugeMetricFamily("kmlx:conversation_cache_bytes", "Memory held by the worker's conversation caches.", labels=labels)
        conv_count = GaugeMetricFamily("kmlx:conversation_cache_entries", "Conversations cached on the worker.", labels=labels)
        ranks = GaugeMetricFamily("kmlx:worker_world_size", "Processes (mlx.distributed ranks) serving the worker's model, by their link.",
                                  labels=labels + ["backend"])
        cache = _CacheFamilies(labels)
        for w in self.pool.workers:
            model = w.state.info.model_id if w.state.info else ""
            key = [w.worker_id, model]
            up.add_metric(key + [w.address], 1.0 if w.ready else 0.0)
            if w.state.info is not None:
                ranks.add_metric(key + [w.state.info.distributed_backend or "none"], w.state.info.world_size)
            if not w.ready:
                continue  # a down worker's last load report is stale
            load = w.state.load
            running.add_metric(key, load.running)
            waiting.add_metric(key, load.waiting)
            kv.add_metric(key, load.kv_tokens)
            inflight.add_metric(key, w.state.inflight)
            summary = (self.stats.get(w.worker_id) or {}).get("kv_cache") or {}
            if summary.get("enabled"):
                conv_tokens.add_metric(key, summary.get("conversation_tokens", 0))
                conv_bytes.add_metric(key, summary.get("conversation_bytes", 0))
                conv_count.add_metric(key, summary.get("conversations", 0))
                cache.add(key, summary)
        yield from (up, ranks, running, waiting, kv, inflight, conv_tokens, conv_bytes, conv_count, *cache.families)


class _CacheFamilies:
    """The worker's prompt cache (worker/kv/manager.py ``summary``) as
    Prometheus series; the token counters mirror vLLM's prefix-cache ones."""

    # (metric, summary field, help)
    COUNTERS = (
        ("kmlx:prefix_cache_queries", "prompt_tokens_queried", "Prompt tokens looked up in the prompt cache."),
        ("kmlx:prefix_cache_hits", "cached_tokens_served", "Prompt tokens served from the prompt cache."),
        ("kmlx:prompt_cache_requests", "requests", "Requests that consulted the prompt cache."),
        ("kmlx:prompt_cache_request_hits", "hits", "Requests that reused at least one cached token."),
        ("kmlx:prompt_cache_evictions", "evictions", "Cached entries and checkpoints evicted (budget or age)."),
        ("kmlx:prompt_cache_evicted_bytes", "evicted_bytes", "Bytes freed by evictions."),
    )
    GAUGES = (
        ("kmlx:prompt_cache_hit_rate", "hit_rate", "Share of requests that reused cached tokens, since the worker started."),
        ("kmlx:prompt_cache_bytes", "cache_bytes", "Memory held by the prompt cache."),
        ("kmlx:prompt_cache_budget_bytes", "cache_budget_bytes", "The prompt cache's memory budget."),
        ("kmlx:prompt_cache_tokens", "cache_tokens", "Tokens held by the prompt cache (shared prefixes once)."),
    )

    def __init__(self, labels: list[str]):
        self._series: list[tuple[CounterMetricFamily | GaugeMetricFamily, str]] = [
            (CounterMetricFamily(name, text, labels=labels), field) for name, field, text in self.COUNTERS
        ] + [(GaugeMetricFamily(name, text, labels=labels), field) for name, field, text in self.GAUGES]

    def add(self, key: list[str], summary: dict[str, Any]) -> None:
        for family, field in self._series:
            value = summary.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                family.add_metric(key, value)

    @property
    def families(self) -> list[CounterMetricFamily | GaugeMetricFamily]:
        return [f for f, _ in self._series]


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.metrics
    await m.refresh()
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
