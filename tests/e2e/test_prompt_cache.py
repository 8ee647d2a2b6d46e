"""Conversation KV and the system-prefix cache, end to end (tiny model)."""

from __future__ import annotations

import signal
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.processes import start_worker, wait_healthy

SYSTEM = "You are a careful assistant. Answer briefly and precisely. " * 3


def chat(stack, conv: str | None, messages: list[dict], **extra) -> httpx.Response:
    body = {"messages": messages, "max_tokens": 8, "temperature": 0.0, **extra}
    if conv:
        body["conversation"] = conv
    r = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r


def kv(r: httpx.Response) -> tuple[str, int, int]:
    return r.headers["x-conv-kv"], int(r.headers["x-conv-cached-tokens"]), int(r.headers["x-conv-processing-tokens"])


def answer(r: httpx.Response) -> str:
    return r.json()["choices"][0]["message"]["content"]


def uncached(stack, messages: list[dict]) -> str:
    r = chat(stack, f"u-{uuid.uuid4().hex}", messages, reset_conversation=True)
    assert kv(r)[0] == "disabled"
    return answer(r)


def conversation(system: str, turns: int) -> list[dict]:
    msgs = [{"role": "system", "content": system}]
    for i in range(turns):
        msgs += [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."}]
    return msgs


def test_follow_up_turns_prefill_only_new_tokens(tiny_stack):
    conv = f"c-{uuid.uuid4().hex}"
    system = f"{SYSTEM} ({conv})"  # a system prompt no other test shares
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "Hello there"}]
    r1 = chat(tiny_stack, conv, msgs)
    mode, cached, processing = kv(r1)
    assert (mode, cached) == ("fresh", 0)
    assert processing == r1.json()["usage"]["prompt_tokens"]
    assert r1.headers["x-conv-id"] == conv
    assert r1.json()["metadata"]["conversation_id"] == conv

    msgs += [{"role": "assistant", "content": answer(r1)}, {"role": "user", "content": "And then?"}]
    r2 = chat(tiny_stack, conv, msgs)
    mode, cached, processing = kv(r2)
    u1, u2 = r1.json()["usage"], r2.json()["usage"]
    assert mode == "hit"
    # at least the whole first prompt is reused (the tiny model's reply may
    # re-tokenize differently, so only what matches is counted)
    assert cached >= u1["prompt_tokens"] - 1
    assert cached + processing == u2["prompt_tokens"]
    assert u2["prompt_tokens_details"]["cached_tokens"] == cached
    assert u2["input_tokens_details"]["cached_tokens"] == cached
    assert answer(r2) == uncached(tiny_stack, msgs)


def test_dropping_the_last_exchange_rolls_back(tiny_stack):
    conv = f"c-{uuid.uuid4().hex}"
    full = conversation(f"{SYSTEM} {conv}", 3)[:-1]  # sys, u0, a0, u1, a1, u2
    first_turn = chat(tiny_stack, conv, full[:2]).json()["usage"]["prompt_tokens"]
    r_full = chat(tiny_stack, conv, full)
    shorter = full[:3] + [{"role": "user", "content": "A different question"}]  # u1/a1 dropped
    r = chat(tiny_stack, conv, shorter)
    mode, cached, processing = kv(r)
    assert mode == "hit"
    # back to the end of a0: everything before the dropped exchange, nothing after
    assert first_turn - 1 <= cached < r_full.json()["usage"]["prompt_tokens"]
    assert answer(r) == uncached(tiny_stack, shorter)


def test_editing_the_first_message_never_serves_stale_state(tiny_stack):
    conv = f"c-{uuid.uuid4().hex}"
    msgs = conversation(f"{SYSTEM} {conv}", 2)[:-1]
    chat(tiny_stack, conv, msgs)
    edited = [dict(m) for m in msgs]
    edited[1]["content"] = "Completely different opening question"
    r = chat(tiny_stack, conv, edited)
    mode, cached, _ = kv(r)
    assert mode in ("hit", "reset")
    system_only = chat(tiny_stack, f"probe-{uuid.uuid4().hex}", msgs[:1] + [{"role": "user", "content": ""}], reset_conversation=True).json()["usage"]["prompt_tokens"]
    assert cached <= system_only  # nothing past the edit is reused
    assert answer(r) == uncached(tiny_stack, edited)


def test_new_conversation_starts_from_the_system_prefix_cache(make_stack, tiny_model_path, log_dir):
    prefix_dir = log_dir / f"prefix-{uuid.uuid4().hex}"
    stack = make_stack(tiny_model_path, worker_args=["--prompt-cache-dir", str(prefix_dir)])
    system = SYSTEM * 4
    r1 = chat(stack, "first", [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}])
    assert kv(r1)[1] == 0
    files = sorted(p.name for p in prefix_dir.iterdir() if not p.name.startswith("."))
    assert files == ["kmlx-tiny-llama.safetensors", "kmlx-tiny-llama.safetensors.hash", "kmlx-tiny-llama.safetensors.len"]
    length = int((prefix_dir / "kmlx-tiny-llama.safetensors.len").read_text())
    first_hash = (prefix_dir / "kmlx-tiny-llama.safetensors.hash").read_text()

    r2 = chat(stack, "second", [{"role": "system", "content": system}, {"role": "user", "content": "Hello"}])
    mode, cached, processing = kv(r2)
    assert (mode, cached) == ("fresh", length)
    assert processing == r2.json()["usage"]["prompt_tokens"] - length
    assert answer(r2) == uncached(stack, [{"role": "system", "content": system}, {"role": "user", "content": "Hello"}])

    chat(stack, "third", [{"role": "system", "content": "A new system prompt."}, {"role": "user", "content": "Hi"}])
    assert (prefix_dir / "kmlx-tiny-llama.safetensors.hash").read_text() != first_hash


def test_concurrent_requests_on_one_conversation_do_not_corrupt_it(tiny_stack):
    conv = f"c-{uuid.uuid4().hex}"
    msgs = conversation(f"{SYSTEM} {conv}", 2)[:-1]
    modes: list[str] = []

    def go() -> None:
        modes.append(kv(chat(tiny_stack, conv, msgs, max_tokens=30))[0])

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(modes) == 3 and "disabled" in modes  # the busy conversation said so
    follow = msgs + [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "next"}]
    r = chat(tiny_stack, conv, follow)
    assert kv(r)[0] == "hit"
    assert answer(r) == uncached(tiny_stack, follow)


def test_disable_kv_cache_flag(make_stack, tiny_model_path):
    stack = make_stack(tiny_model_path, worker_args=["--disable-kv-cache"])
    msgs = [{"role": "user", "content": "Hi"}]
    for _ in range(2):
        mode, cached, _ = kv(chat(stack, "x", msgs))
        assert (mode, cached) == ("disabled", 0)
