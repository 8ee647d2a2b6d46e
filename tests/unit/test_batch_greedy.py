"""kmlx's own decode step (worker/decode.py) draws exactly the tokens mlx-lm's
BatchGenerator draws, greedy, on the real model, with sequences joining a
running batch at different steps and leaving it at different lengths."""

from __future__ import annotations

from typing import Any

from worker.batch import Batch, SequenceSpec

PROMPTS = [
    "Tell me about lighthouses.",
    "What is 12 times 7?",
    "Write a haiku about autumn rain in the mountains, please.",
    "Name three primary colors.",
]
BUDGETS = [24, 9, 17, 24]  # different lengths: rows leave the batch mid-way


def _prompts(loaded: Any) -> list[list[int]]:
    tok = loaded.tokenizer
    return [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in PROMPTS]


def _mlx_lm(loaded: Any, prompts: list[list[int]]) -> dict[int, list[int]]:
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(loaded.model, stop_tokens=None, completion_batch_size=4, prefill_batch_size=2, prefill_step_size=16)
    out: dict[int, list[int]] = {}
    uids: list[int] = []
    for i, (p, n) in enumerate(zip(prompts, BUDGETS)):  # the last two arrive while the first two decode
        uids += gen.insert([p], max_tokens=[n])
        for _ in range(3 if i < 2 else 0):
            for r in gen.next()[1]:
                out.setdefault(r.uid, []).append(r.token)
    for _ in range(200):
        _, responses = gen.next()
        for r in responses:
            out.setdefault(r.uid, []).append(r.token)
        if sum(map(len, out.values())) == sum(BUDGETS):
            break
    gen.close()
    return {i: out[u] for i, u in enumerate(uids)}


def _kmlx(loaded: Any, prompts: list[list[int]]) -> dict[int, list[int]]:
    batch = Batch(loaded.model, eos_token_ids=[], max_running=4, prefill_chunk=16, prefill_batch=2)
    out: dict[int, list[int]] = {}
    uids: list[int] = []
    for i, (p, n) in enumerate(zip(prompts, BUDGETS)):
        uids.append(batch.add(SequenceSpec(p, max_tokens=n, stop_on_eos=False)))
        for _ in range(3 if i < 2 else 0):
            for t in batch.step().tokens:
                out.setdefault(t.uid, []).append(t.token)
    for _ in range(200):
        for t in batch.step().tokens:
            out.setdefault(t.uid, []).append(t.token)
        if sum(map(len, out.values())) == sum(BUDGETS):
            break
    batch.close()
    return {i: out[u] for i, u in enumerate(uids)}


def test_greedy_tokens_equal_mlx_lm_batch_generator(default_loaded: Any) -> None:
    prompts = _prompts(default_loaded)
    theirs, ours = _mlx_lm(default_loaded, prompts), _kmlx(default_loaded, prompts)
    assert [len(ours[i]) for i in range(4)] == BUDGETS
    assert ours == theirs
