"""The worker's compute loop (Engine) on the tiny model, with a transport
that records what would go on the wire and an inbox the test fills: the
loop runs on the test's thread until the test's condition holds."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.messages import Abort, ControlCall, ControlReply, StepOutputs, WorkerLoad
from tests.support.worker_harness import (
    GATEWAY,
    EngineHarness,
    assert_idle,
    chat,
    make_kv,
    make_scheduler,
)
from worker.kv.manager import ControlError

OTHER = b"gw-b"
LONGER: dict[str, Any] = {"max_tokens": 12, "ignore_eos": True}


@pytest.fixture
def harness(tiny_loaded) -> EngineHarness:
    return EngineHarness(make_scheduler(tiny_loaded), tiny_loaded)


def first_token(h: EngineHarness, rid: str) -> bool:
    return any(o.tokens for o in h.transport.of(rid))


def replies(h: EngineHarness) -> list[ControlReply]:
    return [m for _, m in h.transport.sent if isinstance(m, ControlReply)]


def test_outputs_go_out_batched_one_message_per_step_per_gateway(harness):
    h = harness
    h.put(chat("a1", "one", **LONGER))
    h.put(chat("a2", "two", **LONGER))
    h.put(chat("b1", "three", **LONGER), client=OTHER)
    h.run(lambda: all(h.transport.final(r) for r in ("a1", "a2", "b1")))
    owner = {"a1": GATEWAY, "a2": GATEWAY, "b1": OTHER}
    together = 0
    for client, msg in h.transport.sent:
        assert isinstance(msg, StepOutputs) and msg.load is not None
        ids = [o.request_id for o in msg.outputs]
        assert all(owner[r] == client for r in ids)  # never another gateway's outputs
        assert len(ids) == len(set(ids))  # at most one output per request and step
        together += {"a1", "a2"} <= set(ids)
    assert together >= 10  # the two requests of one gateway share messages
    for rid in owner:
        outs = h.transport.of(rid)
        assert outs[0].cache_decision is not None and outs[-1].finish_reason == "length"
        assert outs[-1].usage.completion_tokens == 12
    assert h.engine._owner == {}
    assert_idle(h.scheduler)


def test_abort_reaches_the_running_request_and_is_idempotent(harness):
    h = harness
    h.put(chat("x", max_tokens=500, ignore_eos=True))
    h.put(chat("y", **LONGER))

    def react(_client, _msg) -> None:
        if first_token(h, "x") and not getattr(react, "sent", False):
            react.sent = True  # type: ignore[attr-defined]
            h.put(Abort(request_ids=["x", "x", "unknown"]))
            h.put(Abort(request_ids=["x"]))

    h.run(lambda: h.transport.final("x") is not None and h.transport.final("y") is not None, react=react)
    final = h.transport.final("x")
    assert final.finish_reason == "abort" and final.usage.completion_tokens < 500
    assert [o.finish_reason for o in h.transport.of("x")].count("abort") == 1
    assert h.transport.final("y").finish_reason == "length"
    assert h.scheduler.counters.aborted == 1
    assert_idle(h.scheduler)


def test_a_vanished_gateway_has_its_requests_aborted(harness):
    h = harness
    h.put(chat("gone1", max_tokens=500, ignore_eos=True))
    h.put(chat("gone2", "again", max_tokens=500, ignore_eos=True))
    h.put(chat("kept", **LONGER), client=OTHER)

    def react(_client, _msg) -> None:
        if first_token(h, "gone1") and not getattr(react, "sent", False):
            react.sent = True  # type: ignore[attr-defined]
            h.gone(GATEWAY)

    h.run(lambda: h.transport.final("kept") is not None, react=react)
    sent_to_gone = [m for c, m in h.transport.sent if c == GATEWAY]
    n = len(sent_to_gone)
    assert h.transport.final("gone1") is None  # nothing more is sent to a gateway that is gone
    assert h.scheduler.counters.aborted == 2
    assert h.transport.final("kept").finish_reason == "length"
    assert len([m for c, m in h.transport.sent if c == GATEWAY]) == n
    assert h.engine._owner == {}
    assert_idle(h.scheduler)


BIG = "word " * 3000  # over the inline limit: rendered on the prompt thread


def test_a_big_prompt_rendered_beside_the_loop_is_admitted_and_runs(harness):
    h = harness
    h.put(chat("big", BIG, max_tokens=2, ignore_eos=True))
    h.run(lambda: h.transport.final("big") is not None)
    outs = h.transport.of("big")
    assert outs[0].cache_decision is not None and outs[0].prompt_tokens > 3000  # its admission output, from a later step
    assert outs[-1].finish_reason == "length" and outs[-1].usage.completion_tokens == 2
    assert_idle(h.scheduler)


def test_a_vanished_gateway_loses_its_parked_and_rendering_requests_too(tiny_loaded, tmp_path):
    h = EngineHarness(make_scheduler(tiny_loaded, kv=make_kv(tmp_path, tiny_loaded)), tiny_loaded)
    h.put(chat("lead", **LONGER))
    h.put(chat("parked", "Another", **LONGER))  # shares the template's opening with "lead": parked behind it
    h.put(chat("big", BIG, max_tokens=2))  # on the prompt thread
    h.put(chat("kept", "Elsewhere", max_tokens=3), client=OTHER)
    h.gone(GATEWAY)  # handled in the same turn of the loop, before any step
    h.run(lambda: h.transport.final("kept") is not None)
    h.put(chat("after", "Then", max_tokens=3), client=OTHER)  # the cancelled render must not surface later
    h.run(lambda: h.transport.final("after") is not None)
    assert [m for c, m in h.transport.sent if c == GATEWAY] == []  # nothing goes to a gateway that is gone
    assert {o.request_id for o in h.transport.outputs()} == {"kept", "after"}
    assert h.scheduler.counters.aborted == 3 and h.engine._owner == {}
    assert_idle(h.scheduler)


def test_a_duplicate_request_id_is_refused_and_the_first_runs_on(harness):
    h = harness
    h.put(chat("dup", **LONGER))
    h.put(chat("dup", "another"))
    h.run(lambda: sum(o.finish_reason is not None for o in h.transport.of("dup")) == 2)
    finals = [o for o in h.transport.of("dup") if o.finish_reason is not None]
    assert finals[0].finish_reason == "error" and finals[0].error.code == "duplicate_id" and finals[0].error.status == 400
    assert finals[1].finish_reason == "length" and finals[1].usage.completion_tokens == 12
    # Once finished, the id may be used again.
    h.put(chat("dup", max_tokens=2))
    h.run(lambda: sum(o.finish_reason is not None for o in h.transport.of("dup")) == 3)
    assert h.transport.of("dup")[-1].finish_reason == "length"
    assert_idle(h.scheduler)


def test_a_past_deadline_ends_the_request_with_504(harness):
    h = harness
    h.put(chat("late", max_tokens=500, ignore_eos=True, deadline=1.0))
    h.put(chat("fine", max_tokens=3))
    h.run(lambda: h.transport.final("late") is not None and h.transport.final("fine") is not None)
    late = h.transport.final("late")
    assert late.finish_reason == "error"
    assert (late.error.status, late.error.code, late.error.type) == (504, "deadline_exceeded", "timeout_error")
    assert h.transport.final("fine").finish_reason == "length"
    assert h.scheduler.counters.errors == 1
    assert_idle(h.scheduler)


def test_refusals_are_sent_at_once_with_the_load(tiny_loaded):
    h = EngineHarness(make_scheduler(tiny_loaded, max_queued=1), tiny_loaded)
    h.put(chat("a", max_tokens=3))
    h.put(chat("b"))  # the queue holds one
    h.run(lambda: h.transport.final("a") is not None and h.transport.final("b") is not None)
    b = h.transport.final("b")
    assert (b.finish_reason, b.error.status, b.error.code) == ("error", 503, "queue_full")
    assert h.transport.final("a").finish_reason == "length"


def test_a_failing_step_fails_every_open_request_and_the_loop_goes_on(harness, monkeypatch):
    h = harness
    batch = h.scheduler._batch
    real_step = batch.step
    calls = {"n": 0}

    def step_once_broken():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real_step()

    monkeypatch.setattr(batch, "step", step_once_broken)
    h.put(chat("a", max_tokens=50, ignore_eos=True))
    h.put(chat("b", "other", max_tokens=50, ignore_eos=True), client=OTHER)
    h.run(lambda: h.transport.final("a") is not None and h.transport.final("b") is not None)
    for rid in ("a", "b"):
        final = h.transport.final(rid)
        assert (final.finish_reason, final.error.status, final.error.code) == ("error", 500, "worker_error")
        assert "boom" in final.error.message
    h.put(chat("after", max_tokens=3))
    h.run(lambda: h.transport.final("after") is not None)
    assert h.transport.final("after").finish_reason == "length"
    assert_idle(h.scheduler)


# --------------------------------------------------------------------------- #
# Control calls
# --------------------------------------------------------------------------- #


def test_ping_and_stats_answer_with_the_load_and_counters(harness):
    h = harness
    h.put(chat("a", max_tokens=3))
    h.run(lambda: h.transport.final("a") is not None)
    h.put(ControlCall(call_id="p1", method="ping"))
    h.put(ControlCall(call_id="s1", method="stats"))
    h.run(lambda: len(replies(h)) == 2)
    ping, stats = replies(h)
    # The typed load rides on the ping's reply: it proves the loop runs and how far it got.
    assert ping.ok and ping.load == WorkerLoad(running=0, waiting=0, kv_tokens=0, steps=h.scheduler.counters.steps)
    assert h.scheduler.counters.steps >= 3
    assert stats.ok and stats.result["worker_id"] == "test-worker"
    assert stats.result["admitted"] == stats.result["finished"] == 1
    assert stats.result["running"] == stats.result["waiting"] == 0
    assert stats.result["steps"] == h.scheduler.counters.steps
    assert stats.result["kv_cache"] == {"enabled": False}
    assert stats.result["draining"] is False


def test_control_errors_map_to_statuses(harness):
    h = harness

    def fail(exc: Exception):
        def handler(_args):
            raise exc
        return handler

    h.engine.controls.update(
        lookup=fail(LookupError("no such thing")),
        value=fail(ValueError("bad value")),
        control=fail(ControlError("too big", 413, "disk_budget_exceeded")),
        crash=fail(RuntimeError("unexpected")),
    )
    for method in ("nope", "lookup", "value", "control", "crash"):
        h.put(ControlCall(call_id=method, method=method))
    h.run(lambda: len(replies(h)) == 5)
    got = {r.call_id: (r.ok, r.error.status, r.error.code) for r in replies(h)}
    assert got == {
        "nope": (False, 404, None),
        "lookup": (False, 404, None),
        "value": (False, 400, None),
        "control": (False, 413, "disk_budget_exceeded"),
        "crash": (False, 500, None),
    }
    assert replies(h)[-1].error.type == "server_error"


def test_conversation_control_calls(tiny_loaded, tmp_path):
    kv = make_kv(tmp_path, tiny_loaded)
    h = EngineHarness(make_scheduler(tiny_loaded, kv=kv), tiny_loaded)
    h.put(chat("t1", conversation_id="conv", max_tokens=3))
    h.run(lambda: h.transport.final("t1") is not None)
    calls = [
        ("save", "conv_save", {"conversation_id": "conv", "title": "mine"}),
        ("save-missing", "conv_save", {"conversation_id": "nobody"}),
        ("save-no-id", "conv_save", {}),
        ("stats", "conv_stats", {}),
        ("delete", "conv_delete", {"conversation_id": "conv"}),
        ("load-deleted", "conv_load", {"conversation_id": "conv"}),
    ]
    for call_id, method, args in calls:
        h.put(ControlCall(call_id=call_id, method=method, args=args))
    h.run(lambda: len(replies(h)) == len(calls))
    r = {x.call_id: x for x in replies(h)}
    assert r["save"].ok and r["save"].result["status"] == "saved" and r["save"].result["tokens"] > 0
    assert (r["save-missing"].ok, r["save-missing"].error.status, r["save-missing"].error.code) == (False, 404, "conversation_not_found")
    assert (r["save-no-id"].error.status, r["save-no-id"].error.code) == (400, "missing_conversation_id")
    assert [i["id"] for i in r["stats"].result["items"]] == ["conv"] and r["stats"].result["items"][0]["title"] == "mine"
    assert r["delete"].result["status"] == "deleted"
    assert (r["load-deleted"].ok, r["load-deleted"].error.status) == (False, 404)


# --------------------------------------------------------------------------- #
# Shutdown
# --------------------------------------------------------------------------- #


def test_drain_finishes_running_work_refuses_new_and_returns(harness):
    h = harness
    h.put(chat("running", **LONGER))

    def react(_client, _msg) -> None:
        if first_token(h, "running") and not h.engine.draining:
            h.engine.stop(drain=True)
            h.put(chat("late"))

    h.run(lambda: False if not h.engine.draining else h.transport.final("running") is not None, react=react)
    late = h.transport.final("late")
    assert late is not None and (late.finish_reason, late.error.status, late.error.code) == ("error", 503, "shutting_down")
    assert h.transport.final("running").finish_reason == "length"
    assert h.engine.stats()["draining"] is True
    assert_idle(h.scheduler)


def test_stop_without_drain_then_abort_all_ends_every_request(harness):
    h = harness
    h.put(chat("a", max_tokens=500, ignore_eos=True))
    h.put(chat("b", "other", max_tokens=500, ignore_eos=True), client=OTHER)
    h.run(lambda: first_token(h, "a") and first_token(h, "b"))
    assert h.transport.final("a") is None
    h.engine.abort_all()
    assert (h.transport.final("a").finish_reason, h.transport.final("b").finish_reason) == ("abort", "abort")
    assert h.engine._owner == {}
    assert_idle(h.scheduler)
