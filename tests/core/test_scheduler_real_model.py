"""The scheduler on the real default model (SmolLM2-135M-Instruct), where the
text itself matters: an end-of-sequence finish, a stop string in real words,
and a conversation whose second turn reuses the first turn's reply."""

from __future__ import annotations

import pytest

from tests.support.worker_harness import (
    Finished,
    assert_idle,
    chat,
    generate,
    make_kv,
    make_scheduler,
)
from worker.models.loaded import LoadedModel

QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def answer(default_loaded: LoadedModel) -> Finished:
    s = make_scheduler(default_loaded)
    res = generate(s, chat("r", QUESTION, max_tokens=40))
    assert_idle(s)
    return res


def test_greedy_answer_ends_at_end_of_sequence(answer):
    assert "Paris" in answer.text
    assert answer.final.finish_reason == "stop"  # the model's own end, not the budget
    assert "<|im_end|>" not in answer.text and answer.final.usage.completion_tokens < 40


def test_a_stop_string_in_real_words(default_loaded, answer):
    full = answer.text
    s = make_scheduler(default_loaded)
    res = generate(s, chat("r", QUESTION, max_tokens=40, stop=["Paris"]))
    assert res.final.finish_reason == "stop"
    assert res.text == full[: full.index("Paris")]
    assert_idle(s)


def test_the_second_turn_reuses_the_first_reply_and_answers_as_uncached(default_loaded, answer, tmp_path):
    kv = make_kv(tmp_path, default_loaded)
    s = make_scheduler(default_loaded, kv=kv, prefill_chunk=16)
    t1 = generate(s, chat("t1", QUESTION, conversation_id="conv", max_tokens=40))
    assert t1.text == answer.text
    turn1_tokens = t1.final.usage.prompt_tokens + t1.final.usage.completion_tokens
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": t1.text}]
    t2 = generate(s, chat("t2", "And of Italy?", history=history, conversation_id="conv", max_tokens=5))
    info = t2.outputs[0].cache_decision
    # The reply re-renders to the tokens the model generated: everything but
    # the end-of-turn token is reused.
    assert info.mode == "hit" and info.cached_tokens >= turn1_tokens - 1
    uncached = generate(make_scheduler(default_loaded), chat("u", "And of Italy?", history=history, max_tokens=5))
    assert t2.text == uncached.text and t2.text.strip()
    assert_idle(s)
