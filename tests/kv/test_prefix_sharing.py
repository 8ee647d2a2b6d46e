"""Parallel requests sharing a prefix: one computes it, the others start
from it (in-process scheduler, tiny model)."""

from __future__ import annotations

import pytest

from tests.kv.inproc import GATEWAY, generate, make_kv, make_scheduler, request, run
from worker.models import build_tiny_model, load_model

SYSTEM = "You are a meticulous assistant for a shipping archive. " * 12  # ~140 tokens


@pytest.fixture(scope="module")
def tiny():
    return load_model(str(build_tiny_model()))


def asks(n: int) -> list[list[dict]]:
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question {i}: what came on ship {i}?"}] for i in range(n)]


def test_parallel_requests_prefill_a_shared_prefix_once(tiny, tmp_path):
    kv = make_kv(tmp_path, tiny)
    s = make_scheduler(tiny, kv)
    chats = asks(4)
    results = run(s, [request(f"r{i}", m) for i, m in enumerate(chats)])
    prompts = [len(s.tokenizer.apply_chat_template(m, add_generation_prompt=True)) for m in chats]
    first, *others = results.values()
    assert first.cached == 0
    prefix = min(r.cached for r in others)
    assert prefix >= 100  # each follower started from the first one's system prompt
    suffixes = sum(n - prefix for n in prompts)
    assert s.counters.prompt_tokens <= 1.2 * (prefix + suffixes)
    assert s._sharing.waits == 3 and s._sharing.shared >= 1

    uncached = make_scheduler(tiny, None)
    for i, m in enumerate(chats):
        assert results[f"r{i}"].text == generate(uncached, request(f"u{i}", m)).text


def test_a_parked_request_can_be_aborted_and_its_leader_carries_on(tiny, tmp_path):
    s = make_scheduler(tiny, make_kv(tmp_path, tiny))
    leader, follower = asks(2)
    assert s.admit(GATEWAY, request("lead", leader)) is not None
    assert s.admit(GATEWAY, request("wait", follower)) is None  # parked: no output yet
    assert s.waiting == 2
    out = s.abort("wait")
    assert out is not None and out.finish_reason == "abort" and out.cache_decision is not None
    assert s.abort("wait") is None
    assert s.waiting == 1
    for _ in range(5000):  # a bound: every request here finishes in far fewer steps
        if not s.has_work:
            break
        s.step()
    assert not s.has_work, "still working after 5000 steps"


def test_followers_of_an_aborted_leader_still_finish(tiny, tmp_path):
    s = make_scheduler(tiny, make_kv(tmp_path, tiny))
    chats = asks(3)
    s.admit(GATEWAY, request("lead", chats[0]))
    assert s.admit(GATEWAY, request("f1", chats[1])) is None
    assert s.admit(GATEWAY, request("f2", chats[2])) is None
    s.abort("lead")
    finals = {}
    for _ in range(2000):
        for o in s.step():
            if o.finish_reason:
                finals[o.request_id] = o
        if not s.has_work:
            break
    assert set(finals) == {"f1", "f2"} and all(o.finish_reason == "length" for o in finals.values())


def test_reset_conversation_neither_waits_nor_leads(tiny, tmp_path):
    s = make_scheduler(tiny, make_kv(tmp_path, tiny))
    chats = asks(2)
    assert s.admit(GATEWAY, request("a", chats[0], reset_conversation=True)) is not None
    out = s.admit(GATEWAY, request("b", chats[1], reset_conversation=True))
    assert out is not None and out.cache_decision.mode == "disabled"
    for _ in range(5000):  # a bound: every request here finishes in far fewer steps
        if not s.has_work:
            break
        s.step()
    assert not s.has_work, "still working after 5000 steps"
