"""Warm-up before ready (worker/warmup.py): the gateway's /health stays 503
while the worker runs its warm-up, and the worker serves once it is done.

The warm-up is stretched with a fail point (``warm_up=sleep:N``) so the
test sees it in progress on any machine; what it checks is the order the
worker's own log reports, not a duration."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.processes import reported, start_gateway, start_worker, wait_healthy

STRETCH = {"KMLX_FAILPOINTS": "warm_up=sleep:6"}


@pytest.mark.e2e  # starts a worker and a gateway
def test_health_is_503_until_the_warm_up_is_done(tiny_model_path, log_dir):
    worker, address = start_worker(tiny_model_path, log_dir, name="warming-worker", args=["--warm-up", "on"], env=STRETCH)
    gateway, root = start_gateway([address], log_dir, name="warming-gateway")
    try:
        reported(worker, r"(warming up)", timeout=120)
        deadline = time.monotonic() + 30
        while True:  # the gateway itself may still be starting
            try:
                r = httpx.get(f"{root}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the gateway never answered"
                time.sleep(0.2)
        still_warming = "warmed up" not in worker.log()  # read after the answer: it was given during the warm-up
        assert still_warming, "the warm-up ended before /health was asked; stretch it more"
        assert r.status_code == 503
        assert not r.json()["workers"][0]["ready"]

        wait_healthy(root, [gateway, worker])
        assert "warmed up" in worker.log()
        r = httpx.post(f"{root}/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    finally:
        gateway.stop()
        worker.stop()


@pytest.mark.e2e
def test_warm_up_off_reports_ready_without_it(tiny_model_path, log_dir):
    worker, address = start_worker(tiny_model_path, log_dir, name="cold-worker", args=["--warm-up", "off"])
    gateway, root = start_gateway([address], log_dir, name="cold-gateway")
    try:
        wait_healthy(root, [gateway, worker])
        assert "warming up" not in worker.log()
    finally:
        gateway.stop()
        worker.stop()
