"""The worker side of legacy completions and token counting, in process:
raw prompts (text or ids), fill-in-the-middle, ``max_tokens=0`` (prompt
size only) and the stop string reported on the final output."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from protocol.chat import ChatMessage
from protocol.messages import ChatRequest, SamplingParams
from worker.prompt import PromptError
from worker.raw_prompt import fim_tokens, render_raw
from worker.scheduler import Scheduler, SchedulerLimits


@pytest.fixture(scope="module")
def loaded(tiny_model_path):
    from worker.models.loader import load_model

    return load_model(str(tiny_model_path))


@pytest.fixture
def scheduler(loaded):
    s = Scheduler(loaded.model, loaded.tokenizer, model_id="tiny", context_length=loaded.context_length, limits=SchedulerLimits())
    yield s
    s.close()


def run(s: Scheduler, req: ChatRequest, max_steps: int = 200) -> list:
    first = s.admit(b"client", req)
    assert first is not None
    outs = [first]
    for _ in range(max_steps):
        if outs[-1].finish_reason is not None:
            return outs
        outs += s.step()
    raise AssertionError("the request did not finish")


def raw(rid: str, prompt, **sampling) -> ChatRequest:
    return ChatRequest(request_id=rid, messages=[], prompt=prompt, sampling=SamplingParams(temperature=0.0, **sampling))


def test_text_prompt_is_the_input_as_is(scheduler, loaded):
    outs = run(scheduler, raw("a", "Once upon a time", max_tokens=5))
    assert outs[0].prompt_tokens == len(loaded.tokenizer.encode("Once upon a time"))
    assert outs[-1].finish_reason == "length" and outs[-1].usage.completion_tokens == 5
    assert all(o.reasoning == "" for o in outs)  # raw text: no <think> split


def test_token_ids_generate_the_same_as_their_text(scheduler, loaded):
    ids = loaded.tokenizer.encode("The cat sat on the mat")
    by_text = "".join(o.content for o in run(scheduler, raw("t", "The cat sat on the mat", max_tokens=6)))
    by_ids = "".join(o.content for o in run(scheduler, raw("i", ids, max_tokens=6)))
    assert by_ids == by_text


def test_ids_outside_the_vocabulary_are_refused(scheduler):
    out = scheduler.admit(b"c", raw("bad", [1, 2, 10**6], max_tokens=3))
    assert out.finish_reason == "error" and out.error.param == "prompt" and "10000" in out.error.message


def test_suffix_without_fim_tokens_is_refused_naming_suffix(scheduler):
    out = scheduler.admit(b"c", ChatRequest(request_id="f", messages=[], prompt="def f(", suffix="\n", sampling=SamplingParams()))
    assert out.finish_reason == "error" and out.error.param == "suffix" and out.error.status == 400


def test_max_tokens_zero_reports_the_prompt_size_and_computes_nothing(scheduler, loaded):
    chat = ChatRequest(request_id="c0", messages=[ChatMessage(role="user", content="Hi there")], sampling=SamplingParams(max_tokens=0))
    out = scheduler.admit(b"c", chat)
    assert out.finish_reason == "length" and out.usage.prompt_tokens == out.prompt_tokens > 5
    assert out.usage.completion_tokens == 0 and not scheduler.has_work
    generated = run(scheduler, ChatRequest(request_id="c1", messages=chat.messages, sampling=SamplingParams(max_tokens=1)))
    assert generated[0].prompt_tokens == out.prompt_tokens


def test_the_matched_stop_string_is_reported(scheduler):
    text = "".join(o.content for o in run(scheduler, raw("s0", "Count: one two three", max_tokens=24)))
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    final = run(scheduler, raw("s1", "Count: one two three", max_tokens=24, stop=["\x00never", stop]))[-1]
    assert final.finish_reason == "stop" and final.stop_sequence == stop
    eos_or_length = run(scheduler, raw("s2", "Count: one two three", max_tokens=3))[-1]
    assert eos_or_length.stop_sequence is None


class _Vocab(SimpleNamespace):
    """A tokenizer stand-in for the pure FIM layout rule."""

    def get_vocab(self):
        return self.vocab

    def encode(self, text):
        self.seen = text
        return [1, 2, 3]


def test_fim_layout_prefix_suffix_middle_with_the_models_own_tokens():
    tok = _Vocab(vocab={"<|fim_prefix|>": 1, "<|fim_suffix|>": 2, "<|fim_middle|>": 3}, bos_token_id=None, eos_token_id=0)
    assert fim_tokens(tok) == ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
    render_raw(tok, "def add(a, b):\n", "\n    return c\n", vocab_size=10)
    assert tok.seen == "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n    return c\n<|fim_middle|>"
    with pytest.raises(PromptError) as err:
        render_raw(_Vocab(vocab={"<fim_prefix>": 1}), "x", "y", vocab_size=10)  # an incomplete set is no set
    assert err.value.param == "suffix"
