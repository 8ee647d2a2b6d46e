"""Prompts whose size the client chooses, in-process: refused by size before
anything is rendered, rendered on the prompt thread when big, and the
compute loop free meanwhile (a real scheduler on the tiny model)."""

from __future__ import annotations

import time

import pytest

from protocol.chat import ChatMessage
from protocol.messages import ChatRequest, SamplingParams
from worker.prompt_jobs import INLINE_CHARS, longest_token_chars, text_chars
from worker.scheduler import Scheduler, SchedulerLimits


@pytest.fixture(scope="module")
def loaded(tiny_model_path):
    from worker.models.loader import load_model

    return load_model(str(tiny_model_path))


@pytest.fixture
def scheduler(loaded):
    s = Scheduler(loaded.model, loaded.tokenizer, model_id="tiny", context_length=loaded.context_length,
                  limits=SchedulerLimits(prefill_chunk=64))
    yield s
    s.close()


def ask(rid: str, text: str, **sampling) -> ChatRequest:
    params = {"temperature": 0.0, "max_tokens": 4, **sampling}
    return ChatRequest(rid, [ChatMessage(role="user", content=text)], SamplingParams(**params))


def wait_for_output(s: Scheduler, rid: str, timeout: float = 120.0) -> list:
    """Step until ``rid`` has an output (bounded); everything stepped out meanwhile."""
    outs: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.has_work:
            outs += s.step()
            if any(o.request_id == rid for o in outs):
                return outs
        else:
            time.sleep(0.01)
    raise AssertionError(f"no output for {rid} within {timeout}s")


def test_a_prompt_that_cannot_fit_is_refused_by_its_size_alone(scheduler, loaded):
    huge = "hello world " * 2_000_000  # 24 M characters
    t0 = time.perf_counter()
    out = scheduler.admit(b"gw", ask("huge", huge))
    refused_in = time.perf_counter() - t0
    assert out is not None and out.finish_reason == "error"
    assert out.error.code == "context_length_exceeded" and out.error.status == 400 and out.error.param == "messages"
    assert "characters" in out.error.message  # refused by size: nothing was tokenized
    print(f"24 M characters refused in {refused_in * 1000:.2f} ms")
    budget = loaded.context_length * longest_token_chars(loaded.tokenizer) * 2
    assert scheduler.prompts.max_chars == budget and text_chars(ask("x", huge)) > budget


def test_a_big_prompt_renders_beside_the_loop_while_others_decode(scheduler, loaded):
    small = scheduler.admit(b"gw", ask("small", "Keep talking", max_tokens=40, ignore_eos=True))
    assert small is not None and small.finish_reason is None  # small prompts are admitted in place
    big_text = "hello world " * 100_000  # 1.2 M characters: within the size bound, far over the context
    assert INLINE_CHARS < text_chars(ask("x", big_text)) <= scheduler.prompts.max_chars
    assert scheduler.admit(b"gw", ask("big", big_text)) is None  # on the prompt thread
    assert scheduler.waiting >= 1 and "big" in scheduler.sequences_of(b"gw")
    outs = wait_for_output(scheduler, "big")
    big = next(o for o in outs if o.request_id == "big")
    assert big.finish_reason == "error" and big.error.code == "context_length_exceeded"
    assert "tokens" in big.error.message and "characters" not in big.error.message  # it was tokenized, off the loop
    small_tokens = sum(o.tokens for o in outs if o.request_id == "small")
    print(f"the small request decoded {small_tokens} token(s) while the big prompt was tokenized")


def test_a_big_prompt_that_fits_runs(scheduler, loaded):
    text = "word " * 2000  # 10,000 characters, ~2,000 tokens: rendered on the thread, then run
    assert text_chars(ask("x", text)) > INLINE_CHARS
    assert scheduler.admit(b"gw", ask("fits", text, max_tokens=3, ignore_eos=True)) is None
    outs = wait_for_output(scheduler, "fits")
    first = next(o for o in outs if o.request_id == "fits")
    assert first.finish_reason is None and first.prompt_tokens > 1000
    deadline = time.monotonic() + 120
    while scheduler.has_work and time.monotonic() < deadline:
        outs += scheduler.step()
    final = [o for o in outs if o.request_id == "fits"][-1]
    assert final.finish_reason == "length" and final.usage.completion_tokens == 3


def test_aborting_while_the_prompt_renders(scheduler):
    assert scheduler.admit(b"gw", ask("gone", "hello world " * 50_000)) is None
    out = scheduler.abort("gone")
    assert out is not None and out.finish_reason == "abort"
    assert scheduler.abort("gone") is None  # idempotent
    assert scheduler.waiting == 0 and scheduler.sequences_of(b"gw") == []
    # Jobs run in order: once a later one is done, the aborted one's result
    # has been dropped (never admitted, never reported).
    assert scheduler.admit(b"gw", ask("probe", "hello world " * 1_000)) is None
    outs = wait_for_output(scheduler, "probe")
    assert [o.request_id for o in outs] == ["probe"]
    assert (scheduler.counters.aborted, scheduler.counters.admitted) == (1, 1)


def with_schema(rid: str, schema: dict, **sampling) -> ChatRequest:
    from protocol.messages import ResponseFormat

    req = ask(rid, "Fill in the form", **sampling)
    return ChatRequest(rid, req.messages, req.sampling, response_format=ResponseFormat(type="json_schema", schema=schema))


def test_a_big_output_schema_compiles_on_the_prompt_thread(scheduler):
    """Compiling a response_format grammar grows with the schema (~2 s for
    390 kB here): a big one is compiled beside the loop, with the prompt."""
    props = {f"field_{i}": {"type": "string", "enum": ["yes", "no"]} for i in range(400)}
    schema = {"type": "object", "properties": props, "required": list(props)}
    assert scheduler.admit(b"gw", with_schema("form", schema, max_tokens=6)) is None
    outs = wait_for_output(scheduler, "form")
    first = next(o for o in outs if o.request_id == "form")
    assert first.finish_reason is None and first.error is None  # admitted, with its grammar
    deadline = time.monotonic() + 120
    while scheduler.has_work and time.monotonic() < deadline:
        outs += scheduler.step()
    text = "".join(o.content for o in outs if o.request_id == "form")
    assert text.startswith("{"), text  # the grammar holds from the first token


def test_a_big_invalid_schema_is_refused_from_the_prompt_thread(scheduler):
    schema = {"type": "not-a-type", "description": "x" * 10_000}
    assert scheduler.admit(b"gw", with_schema("bad", schema)) is None
    out = next(o for o in wait_for_output(scheduler, "bad") if o.request_id == "bad")
    assert out.finish_reason == "error" and out.error.code == "unsupported_schema" and out.error.param == "response_format"
