"""worker/batch.py, the adapter over mlx-lm's BatchGenerator, on the tiny model in process."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.models.cache import trim_prompt_cache

from worker.batch import Batch, SequenceSpec, Token
from worker.kv.views import cache_length


@pytest.fixture(scope="module")
def loaded(tiny_model_path: Path) -> Any:
    from worker.models import load_model

    return load_model(str(tiny_model_path))


@pytest.fixture
def batch(loaded: Any) -> Batch:
    return Batch(loaded.model, eos_token_ids=loaded.tokenizer.eos_token_ids, max_running=4, prefill_chunk=4)


@pytest.fixture
def prompt(loaded: Any) -> list[int]:
    return list(loaded.tokenizer.encode("Hello there, how are you today?"))


def run(batch: Batch, max_steps: int = 64) -> dict[int, list[Token]]:
    """Step until the batch is empty; every token by sequence."""
    out: dict[int, list[Token]] = {}
    idle = 0
    for _ in range(max_steps):
        result = batch.step()
        for t in result.tokens:
            out.setdefault(t.uid, []).append(t)
        idle = idle + 1 if not result.tokens and not result.prefilled else 0
        if idle >= 2:
            return out
    raise AssertionError(f"the batch did not drain in {max_steps} steps")


def only(token: int) -> Any:
    """A logits processor that allows one token."""

    def force(_context: mx.array, logits: mx.array) -> mx.array:
        return mx.where(mx.arange(logits.shape[-1]) == token, logits, -mx.inf)

    return force


def test_each_sequence_runs_to_its_own_budget_and_hands_back_its_kv(batch: Batch, prompt: list[int]) -> None:
    a = batch.add(SequenceSpec(prompt, max_tokens=5, stop_on_eos=False))
    b = batch.add(SequenceSpec(prompt[:4], max_tokens=2, stop_on_eos=False))
    out = run(batch)
    assert [len(out[a]), len(out[b])] == [5, 2]
    for uid, n_prompt in ((a, len(prompt)), (b, 4)):
        *middle, last = out[uid]
        assert all(t.finish is None and t.final is None for t in middle)
        assert last.finish == "length" and last.final is not None
        # The returned cache holds exactly the tokens it says: prompt + generated.
        assert len(last.final.tokens) == n_prompt + len(out[uid])
        assert cache_length(last.final.cache) == len(last.final.tokens)
        assert last.final.tokens[:n_prompt] == (prompt if uid == a else prompt[:4])


def test_logprobs_cover_the_vocabulary_and_greedy_takes_the_best(batch: Batch, loaded: Any, prompt: list[int]) -> None:
    uid = batch.add(SequenceSpec(prompt, max_tokens=3, stop_on_eos=False, logprobs=True))
    for t in run(batch)[uid]:
        assert t.logprobs.shape == (loaded.model.args.vocab_size,)
        assert mx.argmax(t.logprobs).item() == t.token
        assert abs(mx.logsumexp(t.logprobs).item()) < 1e-3  # normalised


def test_logits_processors_and_samplers_are_per_sequence(batch: Batch, prompt: list[int]) -> None:
    forced = batch.add(SequenceSpec(prompt, max_tokens=4, stop_on_eos=False, logits_processors=[only(42)]))
    sampled = batch.add(SequenceSpec(prompt, max_tokens=4, stop_on_eos=False, sampler=lambda lp: mx.array([7])))
    free = batch.add(SequenceSpec(prompt, max_tokens=4, stop_on_eos=False))
    out = run(batch)
    assert [t.token for t in out[forced]] == [42] * 4
    assert [t.token for t in out[sampled]] == [7] * 4
    assert [t.token for t in out[free]] != [42] * 4 and [t.token for t in out[free]] != [7] * 4


def test_end_of_sequence_stops_unless_ignored(batch: Batch, loaded: Any, prompt: list[int]) -> None:
    eos = min(loaded.tokenizer.eos_token_ids)
    stops = batch.add(SequenceSpec(prompt, max_tokens=6, logits_processors=[only(eos)]))
    ignores = batch.add(SequenceSpec(prompt, max_tokens=3, stop_on_eos=False, logits_processors=[only(eos)]))
    out = run(batch)
    assert [(t.token, t.finish) for t in out[stops]] == [(eos, "stop")]
    assert [t.finish for t in out[ignores]] == [None, None, "length"]


def test_removed_sequences_stop_and_can_return_their_state(batch: Batch, prompt: list[int]) -> None:
    keep = batch.add(SequenceSpec(prompt, max_tokens=50, stop_on_eos=False))
    drop = batch.add(SequenceSpec(prompt, max_tokens=50, stop_on_eos=False))
    seen: list[Token] = []
    for _ in range(64):
        if len(seen) >= 2:  # both decoding
            break
        seen += batch.step().tokens
    assert len(seen) >= 2, "the sequences never started decoding"
    states = batch.remove([keep], keep_state=True)
    assert batch.remove([drop]) == {}
    assert set(states) == {keep}
    assert cache_length(states[keep].cache) == len(states[keep].tokens) >= len(prompt)
    assert run(batch) == {}  # nothing left running


def test_a_cached_prefix_is_not_prefilled_again(batch: Batch, prompt: list[int]) -> None:
    first = batch.add(SequenceSpec(prompt, max_tokens=1, stop_on_eos=False))
    final = run(batch)[first][-1].final
    assert final is not None
    # Continue from the returned cache with only the tokens it lacks: the same
    # greedy continuation as a fresh run over the whole prompt.
    n = len(prompt) - 1
    view = copy.deepcopy(final.cache)
    trim_prompt_cache(view, len(final.tokens) - n)
    assert cache_length(view) == n
    cont = batch.add(SequenceSpec(prompt[n:], max_tokens=3, cache=view, cached_tokens=prompt[:n], stop_on_eos=False))
    fresh = batch.add(SequenceSpec(prompt, max_tokens=3, stop_on_eos=False))
    out = run(batch)
    assert [t.token for t in out[cont]] == [t.token for t in out[fresh]]


def test_prefill_pauses_where_asked_and_the_state_there_can_be_read(batch: Batch, prompt: list[int]) -> None:
    uid = batch.add(SequenceSpec(prompt, max_tokens=2, stop_on_eos=False, pauses=[3]))
    paused = None
    for _ in range(64):
        result = batch.step()
        hit = [p for p in result.prefilled if p.uid == uid and p.paused]
        if hit:
            paused = hit[0]
            break
    assert paused is not None and paused.done == 3
    state = batch.state(uid)
    assert state is not None and state.tokens == prompt[:3] and cache_length(state.cache) == 3
    out = run(batch)
    assert len(out[uid]) == 2  # and it carries on to the end
