"""Models whose cache cannot be cut — a Qwen3-Next-style hybrid (linear
attention state) and a Gemma-3 with sliding windows — reuse checkpoints:
the state at the end of the last message, taken during prefill, and at the
end of each finished turn (in-process, tiny random models)."""

from __future__ import annotations

import pytest

from protocol.chat import chat_messages
from tests.kv.inproc import generate, make_kv, make_scheduler, request, run
from worker.models import load_model
from worker.models.tiny_arch import build_tiny_arch
from worker.prompt import render_prompt

SYSTEM = "You keep the harbour log. Answer in one short line, naming the ship. " * 3


@pytest.fixture(scope="module", params=["qwen3_next", "gemma3_text"])
def hybrid(request):
    return load_model(str(build_tiny_arch(request.param)))


def turn_one() -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Which ship came in first today?"}]


def marks(loaded, messages) -> tuple[int, int]:
    p = render_prompt(loaded.tokenizer, chat_messages(messages), model_id=loaded.model_id, mark_last_message=True)
    return p.system_tokens, p.last_message_end


def test_the_layout_needs_checkpoints(hybrid, tmp_path):
    kv = make_kv(tmp_path, hybrid)
    make_scheduler(hybrid, kv)
    assert kv.needs_checkpoints


def test_a_re_rendered_reply_resumes_from_the_last_message_checkpoint(hybrid, tmp_path):
    kv = make_kv(tmp_path, hybrid)
    s = make_scheduler(hybrid, kv)
    first = turn_one()
    r1 = generate(s, request("t1", first, max_tokens=12, conversation="c"))
    _, end_of_question = marks(hybrid, first)
    assert end_of_question > 0
    # The client sends the reply back changed (as templates that drop <think> blocks do).
    second = first + [{"role": "assistant", "content": "Edited: " + r1.text}, {"role": "user", "content": "And the second?"}]
    r2 = generate(s, request("t2", second, max_tokens=12, conversation="c"))
    assert (r2.mode, r2.cached) == ("snapshot", end_of_question)
    assert r2.text == generate(make_scheduler(hybrid, None), request("u2", second, max_tokens=12)).text


def test_an_exact_extension_reuses_the_whole_previous_turn(hybrid, tmp_path):
    kv = make_kv(tmp_path, hybrid)
    s = make_scheduler(hybrid, kv)
    first = turn_one()
    r1 = generate(s, request("t1", first, max_tokens=10, conversation="c", ))
    stored = kv.store.get("c")
    assert stored is not None
    # The next prompt holds exactly what the cache holds, then the new question.
    tokens = list(stored.tokens)
    more = s.tokenizer.encode("<|im_end|>\n<|im_start|>user\nNext?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    r2 = generate(s, request("t2", [], prompt=tokens + more, max_tokens=6, conversation="c"))
    assert (r2.mode, r2.cached) == ("hit", len(tokens))
    uncached = generate(make_scheduler(hybrid, None), request("u2", [], prompt=tokens + more, max_tokens=6))
    assert r2.text == uncached.text
    assert r1.final.usage.completion_tokens == 10


def test_a_new_conversation_starts_from_the_system_checkpoint(hybrid, tmp_path):
    kv = make_kv(tmp_path, hybrid)
    s = make_scheduler(hybrid, kv)
    generate(s, request("a", turn_one(), max_tokens=4))
    other = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Anything about the weather?"}]
    system_end, _ = marks(hybrid, other)
    r = generate(s, request("b", other, max_tokens=8, conversation="new"))
    assert (r.mode, r.cached) == ("fresh", system_end)
    assert r.text == generate(make_scheduler(hybrid, None), request("u", other, max_tokens=8)).text


def test_parallel_requests_wait_for_the_leaders_system_checkpoint(hybrid, tmp_path):
    kv = make_kv(tmp_path, hybrid)
    s = make_scheduler(hybrid, kv, prefill_chunk=16)
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Ship number {i}?"}] for i in range(3)]
    results = run(s, [request(f"r{i}", m, max_tokens=6) for i, m in enumerate(chats)])
    system_end, _ = marks(hybrid, chats[0])
    assert [results[f"r{i}"].cached for i in range(3)] == [0, system_end, system_end]
    uncached = make_scheduler(hybrid, None)
    for i, m in enumerate(chats):
        assert results[f"r{i}"].text == generate(uncached, request(f"u{i}", m, max_tokens=6)).text
