"""The prompt cache's own costs, in-process, side by side:

1. lookup + insert per request with 1 and with 64 cached conversations
   (the real model's cache shape, synthetic values): the tree's
   bookkeeping, and separately the array copies it asks MLX for;
2. ``--kv-bits``: memory per 1,000 cached tokens and the error of the
   stored rows (a real prefill), and greedy agreement of answers that
   reuse a quantized prefix with full-precision ones (real model).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache, make_prompt_cache

from protocol.messages import ChatRequest, SamplingParams
from worker.kv.conversations import ConversationLimits
from worker.kv.manager import KVConfig, PromptCacheManager
from worker.kv.radix import PrefixTree
from worker.kv.segments import Codec

SYSTEM_TOKENS, TURNS, PROMPT_NEW, REPLY = 1000, 4, 60, 20


class Shapes:
    def __init__(self, loaded: Any):
        cache = make_prompt_cache(loaded.model)
        probe = loaded.model(mx.array([[1]]), cache=cache)
        mx.eval(probe)
        self.layers = [(c.keys.shape[1], c.keys.shape[3], c.keys.dtype) for c in cache]

    def buffer(self, length: int) -> list[tuple[mx.array, mx.array]]:
        """Evaluated K/V arrays standing in for a batch's buffers."""
        out = [(mx.random.normal((1, h, length, d)).astype(t), mx.random.normal((1, h, length, d)).astype(t)) for h, d, t in self.layers]
        mx.eval(out)
        return out


def cache_view(buffer: list[tuple[mx.array, mx.array]], length: int) -> list[KVCache]:
    out = []
    for k, v in buffer:
        c = KVCache()
        c.keys, c.values, c.offset = k[..., :length, :], v[..., :length, :], length
        out.append(c)
    return out


def overhead(loaded: Any, conversations: int, requests: int = 150) -> dict[str, float]:
    shapes = Shapes(loaded)
    step = PROMPT_NEW + REPLY
    longest = SYSTEM_TOKENS + (TURNS + 2) * step  # a chat that grows past it branches off an earlier turn
    buffer = shapes.buffer(longest + step)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        kv = PromptCacheManager(
            KVConfig(disk_dir=Path(tmp), prefix_dir=Path(tmp) / "p",  # the system prompt goes to disk once, as in a worker
                     limits=ConversationLimits(max_bytes=32 << 30, max_conversations=conversations)),
            model_id="bench", tokenizer_hash="bench")
        kv.bind_model(loaded.model)
        system = [rng.randrange(100, 40000) for _ in range(SYSTEM_TOKENS)]
        history = {}
        for c in range(conversations):  # every conversation: the same system prompt, then turns of its own
            tokens = list(system)
            for _ in range(TURNS):
                tokens += [rng.randrange(100, 40000) for _ in range(PROMPT_NEW + REPLY)]
            kv.tree.insert(tokens, cache_view(buffer, len(tokens)))
            history[f"c{c}"] = tokens
        plan_s, finish_s, join_s, copy_bytes = [], [], [], 0
        for i in range(requests):
            conv = f"c{rng.randrange(conversations)}"
            prompt = history[conv] + [rng.randrange(100, 40000) for _ in range(PROMPT_NEW)]
            req = ChatRequest(request_id=f"r{i}", messages=[], sampling=SamplingParams(), conversation_id=conv)
            t0 = time.perf_counter()
            plan = kv.plan(req, prompt, SYSTEM_TOKENS)
            t1 = time.perf_counter()
            assert plan.cache is not None and plan.decision.cached_tokens == len(prompt) - PROMPT_NEW
            mx.eval([a for c in plan.cache for a in (c.keys, c.values)])  # the join, done in the batch's merge
            t2 = time.perf_counter()
            done = prompt + [rng.randrange(100, 40000) for _ in range(REPLY)]
            before = kv.tree.nbytes
            t3 = time.perf_counter()
            kv.finish(plan, done, cache_view(buffer, len(done)), hashes=[], boundaries=[])
            t4 = time.perf_counter()
            copy_bytes += kv.tree.nbytes - before
            history[conv] = done if len(done) <= longest else done[: SYSTEM_TOKENS + TURNS * step]
            plan_s.append(t1 - t0)
            join_s.append(t2 - t1)
            finish_s.append(t4 - t3)
    return {
        "plan_ms": statistics.median(plan_s) * 1e3, "plan_p95_ms": _p95(plan_s) * 1e3,
        "finish_ms": statistics.median(finish_s) * 1e3, "finish_p95_ms": _p95(finish_s) * 1e3,
        "join_ms": statistics.median(join_s) * 1e3, "prompt_tokens": len(prompt),
        "insert_mb": copy_bytes / requests / 1e6,
    }


def _p95(xs: list[float]) -> float:
    return sorted(xs)[int(0.95 * (len(xs) - 1))]


def bits_memory(loaded: Any) -> list[tuple[str, float, float]]:
    """Bytes per 1,000 cached tokens and the largest error of a stored key,
    from a real 1,000-token prefill."""
    rng = random.Random(1)
    tokens = [rng.randrange(100, 40000) for _ in range(1000)]
    cache = make_prompt_cache(loaded.model)
    for i in range(0, len(tokens), 250):
        mx.eval(loaded.model(mx.array([tokens[i : i + 250]]), cache=cache))
    out = []
    for bits in (None, 8, 4):
        tree = PrefixTree(max_bytes=1 << 40, codec=Codec(bits, 64))
        tree.insert(tokens, cache)
        back = tree.cache_of(tokens)
        assert back is not None
        err = max(float(mx.max(mx.abs(b.keys - c.keys[..., : c.offset, :])).item()) for b, c in zip(back, cache))  # type: ignore[arg-type]
        out.append((f"{bits}-bit" if bits else "full", tree.nbytes / len(tokens) * 1000 / (1 << 20), err))
    return out


QUESTIONS = [
    "Name three rivers in Europe.", "What is the boiling point of water?", "Give me a short poem about the sea.",
    "How do plants make food?", "What is the capital of Japan?", "Explain what a verb is.",
]


def bits_agreement(loaded: Any, max_tokens: int = 24) -> list[tuple[str, int, int, float]]:
    """Second turns that reuse the first turn's cached KV, per storage."""
    from tests.kv.inproc import make_kv, make_scheduler, request, run

    answers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, bits in (("uncached", "off"), ("full", None), ("8-bit", 8), ("4-bit", 4)):
            kv = None if bits == "off" else make_kv(Path(tmp) / label, loaded, kv_bits=bits, prefix_enabled=False)
            s = make_scheduler(loaded, kv)
            first = [[{"role": "system", "content": "You are a concise, helpful assistant."}, {"role": "user", "content": q}] for q in QUESTIONS]
            r1 = run(s, [request(f"a{i}", m, max_tokens=max_tokens, conversation=f"q{i}") for i, m in enumerate(first)])
            second = [m + [{"role": "assistant", "content": r1[f"a{i}"].text}, {"role": "user", "content": "Say more."}] for i, m in enumerate(first)]
            r2 = run(s, [request(f"b{i}", m, max_tokens=max_tokens, conversation=f"q{i}") for i, m in enumerate(second)])
            answers[label] = [r2[f"b{i}"].text for i in range(len(QUESTIONS))]
            if kv is not None:
                assert all(r2[f"b{i}"].cached > 0 for i in range(len(QUESTIONS)))
    ref = answers["full"]
    out = []
    for label in ("uncached", "8-bit", "4-bit"):
        same = sum(a == b for a, b in zip(answers[label], ref))
        chars = statistics.mean(_shared(a, b) / max(len(b), 1) for a, b in zip(answers[label], ref))
        out.append((label, same, len(ref), chars))
    return out


def _shared(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def run(model_path: Path) -> None:
    from worker.models import load_model

    loaded = load_model(str(model_path))
    print("6. lookup + insert per request (in-process; the model's cache shape, synthetic values)")
    print(f"{'cached conversations':>21}{'prompt':>8}{'plan ms':>9}{'p95':>7}{'finish ms':>11}{'p95':>7}{'new MB':>8}{'join ms':>9}")
    for n in (1, 64):
        r = overhead(loaded, n)
        print(f"{n:>21}{r['prompt_tokens']:>8}{r['plan_ms']:9.2f}{r['plan_p95_ms']:7.2f}{r['finish_ms']:11.2f}"
              f"{r['finish_p95_ms']:7.2f}{r['insert_mb']:8.2f}{r['join_ms']:9.2f}")
    print("plan = lookup + the conversation's handle + the lazy join; finish = insert (walk, copy and evaluate the new rows);\n"
          "join = evaluating the rebuilt prefix, which the batch's merge does anyway.  (target: plan + finish <= 5 ms)\n")

    dims = {d for _, d, _ in Shapes(loaded).layers}
    if any(d % 64 for d in dims):
        print(f"7. --kv-bits: skipped, this model's head size {sorted(dims)} is not a multiple of 64 (use --model default)\n")
        return
    print("7. --kv-bits: stored size and error (a real 1,000-token prefill)")
    for label, mib, err in bits_memory(loaded):
        print(f"   {label:>5}: {mib:6.2f} MiB per 1,000 tokens, largest key error {err:.4f}")
    print("   greedy second turns reusing the stored prefix, against full precision:")
    for label, same, n, chars in bits_agreement(loaded):
        print(f"   {label:>8}: {same}/{n} answers identical, {chars:.0%} of the text shared on average")
    print()
