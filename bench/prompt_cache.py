"""Prompt caching, side by side in one run.

1. A growing chat, turns 1..N: time to first token with conversation
   caching vs a worker started with --disable-kv-cache.
2. A long system prompt: the first conversation (cold) vs a second
   conversation with the same system prompt (starts from the prefix cache).
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from tests.support.processes import Stack, start_stack

FILLER = "The archive keeps records of every ship that entered the harbour, its cargo, crew and weather. "


def ttft(stack: Stack, conv: str, messages: list[dict], max_tokens: int = 8) -> tuple[float, str, dict]:
    body = {"conversation": conv, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
    t0 = time.perf_counter()
    first = None
    text = []
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=900) as r:
        r.raise_for_status()
        headers = dict(r.headers)
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"request failed: {chunk['error']}")
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter()
                    text.append(chunk["choices"][0]["delta"]["content"])
    return (first or time.perf_counter()) - t0, "".join(text), headers


def growing_chat(stack: Stack, turns: int) -> list[tuple[float, int, int]]:
    conv = f"bench-{uuid.uuid4().hex}"
    msgs = [{"role": "system", "content": "You are a helpful assistant."}]
    out = []
    for i in range(turns):
        msgs.append({"role": "user", "content": f"Turn {i + 1}. {FILLER * 2}What happened next?"})
        t, text, h = ttft(stack, conv, msgs)
        out.append((t, int(h.get("x-conv-cached-tokens", 0)), int(h.get("x-conv-processing-tokens", 0))))
        msgs.append({"role": "assistant", "content": text})
    return out


def system_prompt(stack: Stack, tokens: int) -> tuple[float, float, int]:
    system = f"[{uuid.uuid4().hex}] " + FILLER * max(1, tokens // 18)
    user = [{"role": "user", "content": "Summarise the rules."}]
    cold, _, _ = ttft(stack, f"a-{uuid.uuid4().hex}", [{"role": "system", "content": system}, *user])
    warm, _, h = ttft(stack, f"b-{uuid.uuid4().hex}", [{"role": "system", "content": system}, *user])
    return cold, warm, int(h.get("x-conv-cached-tokens", 0))


def run(model_path: Path, *, turns: int = 10, system_tokens: int = 2000) -> None:
    print(f"model: {model_path}\n")
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        results = {}
        for label, args in (("cached", []), ("disabled", ["--disable-kv-cache"])):
            stack = start_stack(model_path, logs / label, worker_args=args)
            try:
                ttft(stack, "warm-up", [{"role": "user", "content": "hi"}], 2)
                results[label] = growing_chat(stack, turns)
                if label == "cached":
                    sys_result = system_prompt(stack, system_tokens)
            finally:
                stack.stop()

    print(f"{'turn':>4}{'TTFT cached (s)':>17}{'cached tok':>12}{'prefilled':>11}{'TTFT no cache (s)':>19}{'ratio':>8}")
    for i, ((tc, cached, proc), (tn, _, _)) in enumerate(zip(results["cached"], results["disabled"]), 1):
        print(f"{i:>4}{tc:17.3f}{cached:12d}{proc:11d}{tn:19.3f}{tc / tn:8.2f}")
    c = results["cached"]
    print(f"\nturn {turns} TTFT / turn 2 TTFT (cached): {c[-1][0] / c[1][0]:.2f}  (target <= 1.2)")
    cold, warm, cached = sys_result
    print(f"\nsystem prompt (~{system_tokens} tokens): cold {cold:.3f}s, cached {warm:.3f}s "
          f"({cached} tokens from the prefix cache), cached/cold = {warm / cold:.3f}  (target <= 0.10)")
