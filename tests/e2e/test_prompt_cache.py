"""Conversation KV and the system-prefix cache, end to end (tiny model)."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from tests.support.processes import start_worker, wait_healthy

SYSTEM = "You are a careful assistant. Answer briefly and precisely. " * 3


def restart_worker(stack, model, log_dir, *, kill: int, args: Sequence[str] = ()) -> None:
    old = stack.workers[0]
    old.stop(sig=kill)
    port = int(stack.worker_addresses[0].rsplit(":", 1)[1])
    new, _ = start_worker(model, log_dir, port=port, name=old.name, args=list(args))
    stack.workers[0] = new
    wait_healthy(stack.root_url, [stack.gateway, new])


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
    # A new conversation: at most the template's opening tokens before this
    # unique system text ("<|im_start|>system\n") come from the cache by content.
    assert mode == "fresh" and cached <= 8
    assert cached + processing == r1.json()["usage"]["prompt_tokens"]
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


def prefix_sets(prefix_dir: Path) -> list[str]:
    """The system-prefix sets on disk (one per prefix: data, .len, .hash)."""
    names = sorted(p.name for p in prefix_dir.iterdir() if not p.name.startswith("."))
    stems = sorted({n.split(".safetensors")[0] for n in names})
    assert names == sorted(f"{s}.safetensors{x}" for s in stems for x in ("", ".hash", ".len")), names
    return stems


def test_system_prompts_are_kept_on_disk_and_reused_after_a_restart(make_stack, tiny_model_path, log_dir):
    prefix_dir = log_dir / f"prefix-{uuid.uuid4().hex}"
    args = ["--prompt-cache-dir", str(prefix_dir)]
    stack = make_stack(tiny_model_path, worker_args=args)
    system, other = SYSTEM * 4, "A new system prompt, quite different from the first one."
    r1 = chat(stack, "first", [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}])
    assert kv(r1)[1] == 0
    (first,) = prefix_sets(prefix_dir)
    assert first.startswith("kmlx-tiny-llama.")
    length = int((prefix_dir / f"{first}.safetensors.len").read_text())

    r2 = chat(stack, "second", [{"role": "system", "content": system}, {"role": "user", "content": "Hello"}])
    mode, cached, processing = kv(r2)
    assert mode == "fresh" and cached >= length  # a new conversation, started from the shared prefix
    assert processing == r2.json()["usage"]["prompt_tokens"] - cached

    chat(stack, "third", [{"role": "system", "content": other}, {"role": "user", "content": "Hi"}])
    assert len(prefix_sets(prefix_dir)) == 2  # several prefixes, each under its own hash

    restart_worker(stack, tiny_model_path, log_dir, kill=signal.SIGKILL, args=args)  # memory is gone, the disk is not
    for sys_prompt in (system, other):
        msgs = [{"role": "system", "content": sys_prompt}, {"role": "user", "content": "Hey"}]
        r = chat(stack, f"after-{uuid.uuid4().hex}", msgs)
        mode, cached, _ = kv(r)
        stem = next(s for s in prefix_sets(prefix_dir) if int((prefix_dir / f"{s}.safetensors.len").read_text()) == cached)
        assert mode == "fresh" and stem
        assert answer(r) == uncached(stack, msgs)
    assert stack.worker_stats()[0]["kv_cache"]["prefix_loads"] == 2


def test_the_prefix_disk_budget_keeps_the_most_recent(make_stack, tiny_model_path, log_dir):
    prefix_dir = log_dir / f"prefix-{uuid.uuid4().hex}"
    stack = make_stack(tiny_model_path, worker_args=["--prompt-cache-dir", str(prefix_dir), "--prompt-cache-disk-max-gb", "0.00005"])
    seen: list[set[str]] = []
    for i in range(3):  # ~24 KB per set on the tiny model; the budget (~53 KB) holds two
        chat(stack, None, [{"role": "system", "content": f"System prompt number {i}. " + SYSTEM}, {"role": "user", "content": "Hi"}])
        seen.append(set(prefix_sets(prefix_dir)))
    (s0,), (s1,) = seen[0], seen[1] - seen[0]
    assert len(seen[2]) == 2 and s0 not in seen[2] and s1 in seen[2]  # the least recently used went


def test_concurrent_requests_on_one_conversation_share_the_cache(tiny_stack):
    conv = f"c-{uuid.uuid4().hex}"
    msgs = conversation(f"{SYSTEM} {conv}", 2)[:-1]
    chat(tiny_stack, conv, msgs[:2])  # the conversation's first turn is cached
    results: list[httpx.Response] = []

    def go() -> None:
        results.append(chat(tiny_stack, conv, msgs, max_tokens=30))

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 3
    assert all(kv(r)[0] == "hit" and kv(r)[1] > 0 for r in results)  # none runs uncached
    assert len({answer(r) for r in results}) == 1
    follow = msgs + [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "next"}]
    r = chat(tiny_stack, conv, follow)
    assert kv(r)[0] == "hit"
    assert answer(r) == uncached(tiny_stack, follow)


def test_interleaved_chats_without_ids_prefill_only_their_new_tokens(tiny_stack):
    """What OpenAI SDK clients send: no id, so both chats resolve to this
    client's one conversation; the shared cache still finds each chat."""
    tag = uuid.uuid4().hex
    chats = [[{"role": "system", "content": f"{SYSTEM} {tag}"}] for _ in range(2)]
    previous = [0, 0]
    for turn in range(4):
        for i, msgs in enumerate(chats):
            msgs.append({"role": "user", "content": f"Chat {i}, turn {turn}: tell me about topic {i * 10 + turn}."})
            r = chat(tiny_stack, None, msgs)
            mode, cached, processing = kv(r)
            assert r.headers["x-conv-id"].startswith("client:")
            if turn:
                assert mode == "hit" and cached >= previous[i] - 1, (turn, i, cached, previous[i])
            previous[i] = r.json()["usage"]["prompt_tokens"]
            msgs.append({"role": "assistant", "content": answer(r)})
    assert answer(r) == uncached(tiny_stack, msgs[:-1])


def test_disable_kv_cache_flag(make_stack, tiny_model_path):
    stack = make_stack(tiny_model_path, worker_args=["--disable-kv-cache"])
    msgs = [{"role": "user", "content": "Hi"}]
    for _ in range(2):
        mode, cached, _ = kv(chat(stack, "x", msgs))
        assert (mode, cached) == ("disabled", 0)


@pytest.mark.parametrize("arch", ["qwen3_next", "gemma3_text"])
def test_caches_that_cannot_be_cut_are_saved_loaded_and_resumed(make_stack, log_dir, arch):
    """A hybrid (linear attention) and a sliding-window model: a new chat
    starts from the system prompt's checkpoint, and a finished turn's state
    survives a save, a kill and a load."""
    import json

    from mlx_lm.utils import load_tokenizer

    from worker.models.tiny_arch import build_tiny_arch

    model = build_tiny_arch(arch)
    disk = log_dir / f"conversations-{uuid.uuid4().hex}"
    args = ["--conversation-disk-dir", str(disk)]
    stack = make_stack(model, worker_args=args)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me about the harbour, at length."}]
    chat(stack, "kept", msgs, max_tokens=40)
    other = [msgs[0], {"role": "user", "content": "Something else entirely."}]
    r = chat(stack, "other", other)
    assert kv(r)[0] == "fresh" and kv(r)[1] > 0  # the system prompt's checkpoint
    assert answer(r) == uncached(stack, other)

    assert httpx.post(f"{stack.base_url}/conv_kv/save", json={"conversation": "kept"}, timeout=60).status_code == 200
    restart_worker(stack, model, log_dir, kill=signal.SIGKILL, args=args)
    assert httpx.post(f"{stack.base_url}/conv_kv/load", json={"conversation": "kept"}, timeout=60).status_code == 200
    tokens = json.loads(next(disk.glob("kept-*.json")).read_text())["tokens"]
    more = load_tokenizer(model).encode("<|im_end|>\n<|im_start|>user\nGo on.<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    body = {"prompt": tokens + more, "max_tokens": 8, "temperature": 0.0}
    r2 = httpx.post(f"{stack.base_url}/completions", json={**body, "conversation": "kept"}, timeout=120)
    r3 = httpx.post(f"{stack.base_url}/completions", json={**body, "reset_conversation": True}, timeout=120)
    assert r2.status_code == r3.status_code == 200, r2.text
    assert (r2.headers["x-conv-kv"], int(r2.headers["x-conv-cached-tokens"])) == ("hit", len(tokens))
    assert r2.json()["choices"][0]["text"] == r3.json()["choices"][0]["text"]


def test_kv_bits_flag(make_stack, tiny_model_path, default_model_path, log_dir):
    # The tiny model's heads (16 values) cannot be quantized in groups of 64: refused at start-up.
    from tests.support.processes import spawn

    proc = spawn("worker-kv-bits", ["-m", "worker", "--model", str(tiny_model_path), "--kv-bits", "4",
                                    "--bind", "tcp://127.0.0.1:1"], log_dir)
    assert proc.popen.wait(timeout=120) == 2
    assert "--kv-group-size 64 does not divide this model's head size [16]" in proc.log()

    stack = make_stack(default_model_path, worker_args=["--kv-bits", "8"])
    msgs = [{"role": "user", "content": "Name a colour."}]
    r1 = chat(stack, "bits", msgs, max_tokens=4)
    r2 = chat(stack, "bits", msgs + [{"role": "assistant", "content": answer(r1)}, {"role": "user", "content": "Another?"}], max_tokens=4)
    assert kv(r2)[0] == "hit" and kv(r2)[1] >= r1.json()["usage"]["prompt_tokens"] - 1
    assert stack.worker_stats()[0]["kv_cache"]["kv_storage"] == "8-bit"
