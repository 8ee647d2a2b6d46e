"""Constrained decoding's cost, side by side in one run.

1. Decode tok/s of the same prompts, unconstrained and with a
   ``response_format`` json_schema, through real gateway + worker processes
   (1 stream, then 4 at once) and on mlx-lm's batch in-process; the worker
   measures decode speed itself (``usage.tokens_per_second``). The schema
   has one free string so the model writes until ``max_tokens``, like the
   unconstrained run. Runs are paired and interleaved; the ratio is the
   median of the pairs' ratios.
2. Grammar compile time for a 20-property schema: first (compile +
   validate) and cached (a copy of the compiled matcher), in-process with
   the worker's own ``GrammarCompiler``; and the time to first token of a
   request carrying a new schema vs the same schema again.

Default model: the tiny one (per-token overhead is most visible there).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

PROMPTS = ["Write a long story about a lighthouse keeper.", "Describe the history of tea.", "Explain how bridges stand up."]
FREE_TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"], "additionalProperties": False}


def schema_20(tag: str = "") -> dict[str, Any]:
    kinds = [{"type": "string", "maxLength": 16}, {"type": "integer"}, {"type": "boolean"}, {"type": "number"},
             {"type": "string", "enum": ["red", "green", "blue"]}]
    props = {f"field_{i}{tag}": kinds[i % len(kinds)] for i in range(20)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _body(prompt: str, max_tokens: int, constrained: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0}
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "free", "schema": FREE_TEXT}}
    return body


def _decode_tps(base_url: str, body: dict[str, Any]) -> tuple[float, int]:
    r = httpx.post(f"{base_url}/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    usage = r.json()["usage"]
    return usage["tokens_per_second"], usage["completion_tokens"]


def decode_speeds(base_url: str, max_tokens: int, streams: int, rounds: int) -> tuple[float, float, float]:
    """Median per-stream decode tok/s, unconstrained and constrained, and the
    median of their per-pair ratios. The two runs of a pair use the same
    prompt and follow each other (order alternating by round), so a machine
    shared with other work loads both alike."""

    def batch(prompt: str, constrained: bool) -> float:
        speeds: list[float] = []
        lock = threading.Lock()

        def one() -> None:
            tps, _ = _decode_tps(base_url, _body(prompt, max_tokens, constrained))
            with lock:
                speeds.append(tps)

        threads = [threading.Thread(target=one) for _ in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return statistics.median(speeds)

    return paired(batch, rounds)


def paired(speed: Callable[[str, bool], float], rounds: int) -> tuple[float, float, float]:
    """Median tok/s unconstrained and constrained, and the median of the pairs'
    ratios; each pair is one prompt run both ways back to back, the order
    alternating by round."""
    free, held, ratios = [], [], []
    for r in range(rounds):
        for prompt in PROMPTS:
            order = (False, True) if r % 2 == 0 else (True, False)
            got = {c: speed(prompt, c) for c in order}
            free.append(got[False])
            held.append(got[True])
            ratios.append(got[True] / got[False])
    return statistics.median(free), statistics.median(held), statistics.median(ratios)


def in_process(model_path: Path, max_tokens: int, rounds: int) -> tuple[float, float, float]:
    """The same comparison on the worker's batch directly (worker/batch.py,
    no serving): the grammar's own cost per token."""
    from protocol.messages import ResponseFormat
    from worker.batch import Batch, SequenceSpec
    from worker.grammar import GrammarCompiler, GrammarProcessor, response_format_grammar
    from worker.models import load_model
    from worker.sampling import LogitsProcessor

    loaded = load_model(str(model_path))
    model, tok = loaded.model, loaded.tokenizer
    compiler = GrammarCompiler(tok)
    grammar = response_format_grammar(ResponseFormat("json_schema", schema=FREE_TEXT))

    def speed(prompt: str, constrained: bool) -> float:
        gen = Batch(model, eos_token_ids=tok.eos_token_ids, max_running=1, prefill_chunk=2048)
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        procs: list[LogitsProcessor] = [GrammarProcessor(compiler.matcher(grammar, "bench"), compiler.tokenizer("bench"))] if constrained else []
        gen.add(SequenceSpec(list(ids), max_tokens=max_tokens, logits_processors=procs))
        n, start, done = 0, 0.0, False
        while not done:
            for t in gen.step().tokens:
                n += 1
                if n == 1:
                    start = time.perf_counter()
                done = done or t.finish is not None
        gen.close()
        return (n - 1) / (time.perf_counter() - start)

    return paired(speed, rounds)


def compile_times(model_path: Path, repeats: int = 5) -> tuple[float, float, float]:
    """(llguidance tokenizer build, first compile of a 20-property schema, cached) in seconds."""
    from protocol.messages import ResponseFormat
    from worker.grammar import GrammarCompiler, response_format_grammar
    from worker.models import load_model

    tokenizer = load_model(str(model_path)).tokenizer
    t0 = time.perf_counter()
    compiler = GrammarCompiler(tokenizer)
    compiler.tokenizer("bench")
    built = time.perf_counter() - t0
    firsts, cached = [], []
    for i in range(repeats):
        fmt = ResponseFormat("json_schema", schema=schema_20(f"_{i}"))
        t0 = time.perf_counter()
        compiler.matcher(response_format_grammar(fmt), "response_format")
        firsts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        compiler.matcher(response_format_grammar(fmt), "response_format")
        cached.append(time.perf_counter() - t0)
    return built, statistics.median(firsts), statistics.median(cached)


def _ttft(base_url: str, schema: dict[str, Any]) -> float:
    body = {"messages": [{"role": "user", "content": "Fill the form."}], "max_tokens": 4, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "form", "schema": schema}}}
    r = httpx.post(f"{base_url}/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return r.json()["usage"]["time_to_first_token"]


def run(model_path: Path, *, max_tokens: int = 128, streams: int = 4, rounds: int = 2) -> None:
    from tests.support.processes import start_stack

    built, first, cached = compile_times(model_path)
    print(f"llguidance tokenizer, built once per worker: {built * 1000:.0f} ms")
    print(f"grammar compile, 20-property schema: first {first * 1000:.2f} ms, cached {cached * 1000:.3f} ms "
          f"({first / cached:.0f}x)")
    with tempfile.TemporaryDirectory(prefix="kmlx-bench-agents-") as logs:
        stack = start_stack(model_path, Path(logs))
        try:
            base = stack.base_url
            _decode_tps(base, _body("warm up", 8, True))
            new = [_ttft(base, schema_20(f"_ttft{i}")) for i in range(3)]
            same = [_ttft(base, schema_20("_ttft0")) for _ in range(3)]
            print(f"time to first token, new schema vs cached: {statistics.median(new) * 1000:.1f} ms vs "
                  f"{statistics.median(same) * 1000:.1f} ms")
            print(f"\ndecode tok/s per stream ({max_tokens} new tokens, greedy; medians of {rounds} rounds x {len(PROMPTS)} prompts,"
                  " ratio = median of paired runs):")
            print(f"{'':>22} {'unconstrained':>14} {'json_schema':>12} {'ratio':>7}")
            for n in (1, streams):
                free, held, ratio = decode_speeds(base, max_tokens, n, rounds)
                print(f"{f'served, {n} stream(s)':>22} {free:>14.1f} {held:>12.1f} {ratio:>6.2f}x")
        finally:
            stack.stop()
    free, held, ratio = in_process(model_path, max_tokens, rounds)
    print(f"{'in-process batch, 1':>22} {free:>14.1f} {held:>12.1f} {ratio:>6.2f}x")
