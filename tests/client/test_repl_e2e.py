"""`kmlx chat` end to end: the real REPL in a pseudo-terminal and the
one-shot mode, against real gateway + worker processes on the tiny model."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.client.client_pty import PROMPT, finish, matched, say, spawn_chat


def worker_totals(stack: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for w in stack.worker_stats():
        for key in ("running", "aborted", "finished", "generation_tokens"):
            totals[key] = totals.get(key, 0) + int(w.get(key) or 0)
    return totals


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def kmlx(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


def test_repl_streams_then_hits_cache_and_ctrl_n_starts_fresh(tiny_stack: Any, client_env: dict[str, str]) -> None:
    child = spawn_chat(client_env, tiny_stack.base_url, "-v", "--max-tokens", "8", "--temperature", "0", timeout=120)
    say(child, "Hello there")
    child.expect(r"completion (\d+)")
    assert int(matched(child, 1)) > 0
    child.expect_exact("kv fresh")
    child.expect_exact(PROMPT)

    say(child, "Tell me more")
    child.expect(r"prompt \d+ \(cached (\d+)\)")
    assert int(matched(child, 1)) > 0
    child.expect_exact("kv hit")
    child.expect_exact(PROMPT)

    child.sendcontrol("n")
    child.expect_exact("new conversation")
    child.expect_exact(PROMPT)
    say(child, "Start again")
    child.expect_exact("kv fresh")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    assert finish(child) == 0


def test_ctrl_c_stops_the_answer_and_the_worker_aborts(tiny_stack: Any, client_env: dict[str, str]) -> None:
    before = worker_totals(tiny_stack)
    child = spawn_chat(
        client_env, tiny_stack.base_url, "--max-tokens", "3000", "-o", "ignore_eos=true", timeout=120
    )
    say(child, "Tell me a very long story")
    wait_until(
        lambda: worker_totals(tiny_stack)["generation_tokens"] > before["generation_tokens"] + 5,
        what="the worker to start generating",
    )
    child.sendcontrol("c")
    child.expect_exact("stopped")
    child.expect_exact(PROMPT)
    wait_until(
        lambda: worker_totals(tiny_stack)["aborted"] > before["aborted"]
        and worker_totals(tiny_stack)["running"] == 0,
        timeout=30,
        what="the worker to count the abort",
    )
    after = worker_totals(tiny_stack)
    assert after["generation_tokens"] - before["generation_tokens"] < 3000  # it really stopped early
    child.sendcontrol("c")
    assert finish(child) == 0


def test_image_part_reaches_the_server(tiny_stack: Any, client_env: dict[str, str], tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "my pictures"
    folder.mkdir()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(folder / "red square.png")
    env = {**client_env, "HOME": str(tmp_path)}
    child = spawn_chat(env, tiny_stack.base_url, "-v", "--max-tokens", "8", timeout=120)
    say(child, 'image:"~/my pictures/red square.png" Describe this')
    child.expect_exact("attached 1 image")
    # The tiny model is text-only: the worker itself refuses the image part,
    # which proves it travelled as an image_url part. A vision model answers.
    index = child.expect([r"does not accept images", r"kv (fresh|hit)"])
    if index == 0:
        child.expect_exact("messages[0]")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    assert finish(child) == 0


def test_prompt_flag_prints_only_the_answer(tiny_stack: Any, client_env: dict[str, str]) -> None:
    # a seed, not temperature 0: the random-weight model's argmax is a newline
    args = ["chat", "-u", tiny_stack.base_url, "--max-tokens", "8", "--temperature", "1", "-o", "seed=7"]
    streamed = kmlx(client_env, *args, "-p", "Say hello")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stderr == ""
    assert streamed.stdout.strip() and streamed.stdout.endswith("\n")
    # the same answer without streaming: what streams is exactly the answer
    whole = kmlx(client_env, *args, "--no-stream", "-p", "Say hello")
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout == streamed.stdout
    verbose = kmlx(client_env, *args, "-v", "-p", "Say hello")
    assert verbose.returncode == 0 and verbose.stdout == streamed.stdout
    assert "kv fresh" in verbose.stderr and "decode" in verbose.stderr and "ttft" in verbose.stderr


def test_errors_exit_non_zero(tiny_stack: Any, client_env: dict[str, str]) -> None:
    r = kmlx(client_env, "chat", "-u", tiny_stack.base_url, "-o", "max_tokens=-3", "-p", "hi")
    assert r.returncode == 1 and r.stdout == ""
    assert "Gateway error [HTTP 400" in r.stderr and "Traceback" not in r.stderr


def test_models_and_health(tiny_stack: Any, client_env: dict[str, str]) -> None:
    r = kmlx(client_env, "models", "-u", tiny_stack.base_url)
    assert r.returncode == 0 and r.stdout.strip()
    r = kmlx(client_env, "health", "-u", tiny_stack.base_url)
    assert r.returncode == 0 and r.stdout.startswith("ready")


def test_image_answered_by_the_tiny_vlm(make_stack: Any, client_env: dict[str, str], tmp_path: Path) -> None:
    from PIL import Image

    from worker.vision.tiny_vlm import build_tiny_vlm

    stack = make_stack(build_tiny_vlm())
    Image.new("RGB", (48, 32), (20, 160, 40)).save(tmp_path / "green field.png")
    env = {**client_env, "HOME": str(tmp_path)}
    child = spawn_chat(env, stack.base_url, "-v", "--max-tokens", "6", timeout=180)
    say(child, r"image:~/green\ field.png What colour is this?")
    child.expect_exact("attached 1 image")
    child.expect(r"completion (\d+)")
    assert int(matched(child, 1)) > 0
    child.expect(r"kv [a-z]+")  # whatever the server reports for image turns
    child.expect_exact(PROMPT)
    # a follow-up: the image stays in the history the client resends
    say(child, "Are you sure?")
    child.expect(r"completion (\d+)")
    child.expect_exact(PROMPT)
    child.sendcontrol("d")
    assert finish(child) == 0
