"""Prompt caching, side by side in one run: the same requests against a
worker with the prompt cache and one started with ``--disable-kv-cache``.

1. A growing chat with a conversation id, turns 1..N: time to first token.
2. Two chats without ids (what OpenAI-SDK clients send), interleaved,
   N turns each: every turn should prefill only its new tokens.
3. Eight requests at once sharing a ~2k-token system prompt and tools:
   total prefill against prefix + the eight suffixes.
4. A long system prompt: a first conversation (cold) and a second one.
5. Every answer of 1-4, cached vs uncached: greedy output must be identical.

Then, in-process (bench/cache_internals.py): lookup + insert overhead with
64 cached conversations, and --kv-bits memory and greedy agreement.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.processes import Stack, start_stack

FILLER = "The archive keeps records of every ship that entered the harbour, its cargo, crew and weather. "
TOOLS = [
    {"type": "function", "function": {
        "name": f"lookup_{name}", "description": f"Look up a {name} in the harbour archive by name or date. " * 3,
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "year": {"type": "integer"}},
                       "required": ["query"]}}}
    for name in ("ship", "cargo", "crew", "storm", "captain", "berth")
]


@dataclass
class Reply:
    ttft: float
    text: str
    mode: str
    cached: int
    prefilled: int
    prompt: int


@dataclass
class Results:
    replies: dict[str, list[Reply]] = field(default_factory=dict)
    parallel_seconds: float = 0.0


def ask(stack: Stack, messages: list[dict], *, conv: str | None = None, max_tokens: int = 8, **extra: object) -> Reply:
    body: dict = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
                  "stream_options": {"include_usage": True}, **extra}
    if conv:
        body["conversation"] = conv
    t0 = time.perf_counter()
    first, text = None, []
    usage: dict[str, int] = {}
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=3600) as r:
        r.raise_for_status()
        h = r.headers
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"request failed: {chunk['error']}")
            usage = chunk.get("usage") or usage
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                text.append(chunk["choices"][0]["delta"]["content"])
    return Reply((first or time.perf_counter()) - t0, "".join(text), h["x-conv-kv"], int(h["x-conv-cached-tokens"]),
                 int(h["x-conv-processing-tokens"]), int(usage.get("prompt_tokens", 0)))


def growing_chat(stack: Stack, turns: int, tag: str) -> list[Reply]:
    conv = f"bench-{tag}"
    msgs = [{"role": "system", "content": f"You are a helpful assistant. ({tag})"}]
    out = []
    for i in range(turns):
        msgs.append({"role": "user", "content": f"Turn {i + 1}. {FILLER * 2}What happened next?"})
        out.append(ask(stack, msgs, conv=conv))
        msgs.append({"role": "assistant", "content": out[-1].text})
    return out


def interleaved(stack: Stack, turns: int, tag: str) -> list[Reply]:
    """Two chats, no ids: both resolve to this client's address."""
    chats = [[{"role": "system", "content": f"You are assistant {c} of the archive. ({tag})"}] for c in "AB"]
    out = []
    for i in range(turns):
        for c, msgs in enumerate(chats):
            msgs.append({"role": "user", "content": f"Chat {'AB'[c]}, turn {i + 1}: {FILLER}What about ship {c * 100 + i}?"})
            out.append(ask(stack, msgs))
            msgs.append({"role": "assistant", "content": out[-1].text})
    return out


def parallel(stack: Stack, n: int, system_tokens: int, tag: str) -> tuple[list[Reply], float]:
    system = f"[{tag}] You are the archive's agent. " + FILLER * max(1, (system_tokens - 400) // 18)
    replies: list[Reply | None] = [None] * n

    def one(i: int) -> None:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": f"Agent task {i}: find ship number {i * 7}."}]
        replies[i] = ask(stack, msgs, tools=TOOLS, max_tokens=8)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None for r in replies), "a parallel request failed"
    return [r for r in replies if r is not None], time.perf_counter() - t0


def system_prompt(stack: Stack, tokens: int, tag: str) -> list[Reply]:
    system = f"[{tag}] " + FILLER * max(1, tokens // 18)
    user = [{"role": "user", "content": "Summarise the rules."}]
    return [ask(stack, [{"role": "system", "content": system}, *user], conv=f"{c}-{tag}") for c in ("a", "b")]


def run(model_path: Path, *, turns: int = 10, system_tokens: int = 2000, parallel_requests: int = 8, internals: bool = True) -> None:
    print(f"model: {model_path}\n")
    results: dict[str, Results] = {}
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        for label, args in (("cached", []), ("uncached", ["--disable-kv-cache"])):
            # Eight uncached 2k-token prefills share each step: on a loaded CPU a step can outlast the default ping timeout.
            stack = start_stack(model_path, Path(tmp) / label, worker_args=["--prompt-cache-dir", str(Path(tmp) / "prefix"), *args],
                                gateway_args=["--ping-timeout", "3600"])
            try:
                ask(stack, [{"role": "user", "content": "hi"}], conv="warm-up", max_tokens=2)
                res = results[label] = Results()
                t0 = time.perf_counter()
                res.replies["growing"] = growing_chat(stack, turns, tag)
                _progress(label, "growing chat", t0)
                res.replies["interleaved"] = interleaved(stack, turns, tag)
                _progress(label, "interleaved chats", t0)
                res.replies["parallel"], res.parallel_seconds = parallel(stack, parallel_requests, system_tokens, tag)
                _progress(label, "parallel requests", t0)
                res.replies["system"] = system_prompt(stack, system_tokens, tag)
                _progress(label, "system prompt", t0)
            finally:
                stack.stop()
    report(results, turns)
    if internals:
        from .cache_internals import run as run_internals

        run_internals(model_path)


def _progress(label: str, phase: str, t0: float) -> None:
    print(f"  [{label}] {phase} done at {time.perf_counter() - t0:.0f}s", flush=True)


def report(results: dict[str, Results], turns: int) -> None:
    c, u = results["cached"].replies, results["uncached"].replies

    print("1. growing chat (conversation id)")
    print(f"{'turn':>4}{'TTFT cached (s)':>17}{'cached tok':>12}{'prefilled':>11}{'TTFT no cache (s)':>19}{'ratio':>8}")
    for i, (a, b) in enumerate(zip(c["growing"], u["growing"]), 1):
        print(f"{i:>4}{a.ttft:17.3f}{a.cached:12d}{a.prefilled:11d}{b.ttft:19.3f}{a.ttft / b.ttft:8.2f}")
    g = c["growing"]
    print(f"turn {turns} TTFT / turn 2 TTFT (cached): {g[-1].ttft / g[1].ttft:.2f}  (target <= 1.2)\n")

    print("2. two interleaved chats without ids")
    print(f"{'turn':>5}{'prompt':>8}{'cached':>8}{'prefilled':>11}{'prev. prompt':>14}{'TTFT (s)':>10}{'no cache (s)':>14}")
    whole = near = 0
    previous = {0: 0, 1: 0}
    for i, (a, b) in enumerate(zip(c["interleaved"], u["interleaved"])):
        chat = i % 2
        label = f"{'AB'[chat]}{i // 2 + 1}"
        print(f"{label:>5}{a.prompt:8d}{a.cached:8d}{a.prefilled:11d}{previous[chat]:14d}{a.ttft:10.3f}{b.ttft:14.3f}")
        whole += a.cached >= previous[chat]
        near += a.cached >= previous[chat] - 1
        previous[chat] = a.prompt
    n = len(c["interleaved"])
    print(f"turns that reused their chat's whole previous prompt: {whole}/{n}; all but its last token: {near}/{n}")
    print("(the last token of a prompt, the newline after 'assistant', can merge with the re-sent reply's first characters\n"
          " when the reply is tokenized again: the token streams then differ there)")
    new = sum(a.prefilled for a in c["interleaved"])
    print(f"prefilled tokens, all turns: cached {new}, no cache {sum(b.prefilled for b in u['interleaved'])}\n")

    print(f"3. {len(c['parallel'])} parallel requests sharing a system prompt + tools")
    cp = c["parallel"]
    prefix = max(r.cached for r in cp)
    ideal = prefix + sum(r.prompt - prefix for r in cp)
    total, plain = sum(r.prefilled for r in cp), sum(r.prefilled for r in u["parallel"])
    print(f"shared prefix {prefix} tokens; prompts {[r.prompt for r in cp]}")
    print(f"total prefill: cached {total}, no cache {plain}; prefix + suffixes = {ideal}; "
          f"cached / (prefix + suffixes) = {total / ideal:.3f}  (target <= 1.2)")
    print(f"all {len(cp)} done in {results['cached'].parallel_seconds:.1f}s cached, {results['uncached'].parallel_seconds:.1f}s without; "
          f"mean TTFT {sum(r.ttft for r in cp) / len(cp):.2f}s vs {sum(r.ttft for r in u['parallel']) / len(cp):.2f}s\n")

    cold, warm = c["system"]
    print(f"4. system prompt (~{warm.prompt} tokens): cold {cold.ttft:.3f}s, second conversation {warm.ttft:.3f}s "
          f"({warm.cached} tokens cached, {warm.mode}), ratio {warm.ttft / cold.ttft:.3f}  (target <= 0.10)\n")

    pairs = [(k, a, b) for k in c for a, b in zip(c[k], u[k])]
    same = sum(a.text == b.text for _, a, b in pairs)
    print(f"5. greedy answers identical with and without the cache: {same}/{len(pairs)}")
    for k, a, b in pairs:
        if a.text != b.text:
            print(f"   differs ({k}): {a.text!r} vs {b.text!r}")
    print()
