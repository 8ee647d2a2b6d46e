"""A worker run as two ranks on loopback (the ring backend), end to end:
real ranks, a real gateway, real ZeroMQ and HTTP. Greedy answers equal a
single-process worker's — the tiny llama split by heads (tensor parallel),
the real model by layers (pipeline); an abort leaves the group in step; a
dead rank makes rank 0 tell the gateway (GoingAway) and exit non-zero."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.e2e import starts_processes
from tests.support.metrics import scrape
from tests.support.processes import Stack, start_stack

from .ranks import start_rank_stack

PROMPTS = ["Tell me about the sea.", "What is two plus two?", "Name a colour."]


@pytest.fixture
@starts_processes
def stacks(log_dir: Path) -> Iterator[Callable[..., Stack]]:
    started: list[Stack] = []

    def make(model: Path, *, ranks: int, worker_args: tuple[str, ...] = ()) -> Stack:
        if ranks == 1:
            stack = start_stack(model, log_dir, worker_args=["--disable-kv-cache", *worker_args])
        else:
            stack = start_rank_stack(model, log_dir, worker_args=worker_args, size=ranks)
        started.append(stack)
        return stack

    yield make
    for s in started:
        s.stop()


def ask(stack: Stack, prompt: str, max_tokens: int) -> str:
    r = httpx.post(f"{stack.base_url}/chat/completions", timeout=300, json={
        "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
    })
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def answers(stack: Stack, max_tokens: int, prompts: list[str] = PROMPTS) -> list[str]:
    """Asked together, so the ranks batch them."""
    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(lambda p: ask(stack, p, max_tokens), prompts))


def test_tensor_parallel_answers_equal_one_process_and_report_the_group(stacks: Callable[..., Stack], tiny_model_path: Path) -> None:
    group = stacks(tiny_model_path, ranks=2)
    got = answers(group, 24)
    group_stats = group.worker_stats()[0]
    metrics = scrape(group.root_url)
    group.stop()
    assert [r.popen.returncode for r in group.workers] == [0, 0]  # rank 0's SIGTERM stops the group cleanly
    single = stacks(tiny_model_path, ranks=1)
    assert got == answers(single, 24)
    assert group_stats["world_size"] == 2
    assert group_stats["distributed"]["backend"] == "ring" and group_stats["distributed"]["parallelism"] == "tensor"
    assert group_stats["distributed"]["steps"] > 0 and group_stats["distributed"]["control_bytes_per_step"] > 0
    assert single.worker_stats()[0]["world_size"] == 1
    sizes = {dict(labels)["backend"]: value for (name, labels), value in metrics.items() if name == "kmlx:worker_world_size"}
    assert sizes == {"ring": 2.0}


def test_pipeline_real_model_answers_equal_one_process(stacks: Callable[..., Stack], default_model_path: Path) -> None:
    prompts = ["What is the capital of France?", "Write a haiku about rain."]
    group = stacks(default_model_path, ranks=2, worker_args=("--pipeline",))
    got = answers(group, 16, prompts)
    assert group.worker_stats()[0]["distributed"]["parallelism"] == "pipeline"
    group.stop()
    single = stacks(default_model_path, ranks=1)
    assert got == answers(single, 16, prompts)
    assert "Paris" in got[0]


def test_an_aborted_stream_leaves_the_ranks_in_step(stacks: Callable[..., Stack], tiny_model_path: Path) -> None:
    group = stacks(tiny_model_path, ranks=2)
    before = ask(group, PROMPTS[0], 12)
    body = {"messages": [{"role": "user", "content": "Count forever."}], "max_tokens": 4000, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{group.base_url}/chat/completions", json=body, timeout=120) as r:
        chunks = 0
        for line in r.iter_lines():
            chunks += line.startswith("data:")
            if chunks >= 5:
                break  # the client leaves mid-stream: the gateway aborts the request
    deadline = time.monotonic() + 60
    while group.worker_stats()[0]["aborted"] < 1:
        assert time.monotonic() < deadline, "the abort never reached the worker"
        time.sleep(0.2)
    assert ask(group, PROMPTS[0], 12) == before  # every rank's batch still agrees
    assert all(r.alive() for r in group.workers)


def test_a_dead_rank_stops_the_worker_with_going_away(stacks: Callable[..., Stack], tiny_model_path: Path) -> None:
    group = stacks(tiny_model_path, ranks=2)
    rank0, rank1 = group.workers
    rank1.popen.send_signal(signal.SIGKILL)
    rank0.popen.wait(60)  # idle, it finds out from its next heartbeat
    assert rank0.popen.returncode not in (0, None)
    # Its shutdown says why to the gateways (GoingAway, transport.close); a
    # gateway whose ping went unanswered while the ring retried may have
    # marked it down just before: either way it is out of the pool.
    assert "worker stopped (crashed: GroupBroken" in rank0.log() and "the rank group broke" in rank0.log()
    deadline = time.monotonic() + 30
    while not re.search(r"is going away|is down", group.gateway.log()):
        assert time.monotonic() < deadline, group.gateway.log()[-2000:]
        time.sleep(0.2)
    r = httpx.get(f"{group.root_url}/health", timeout=10)
    assert r.status_code == 503
