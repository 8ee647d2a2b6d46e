"""Streaming tool-call parsers on recorded model outputs, fed in pieces of
every size: the calls and the content must not depend on where the model's
tokens happened to split the text, and no markup may leak into content."""

from __future__ import annotations

import json

import pytest

from worker.tool_format import FALLBACK, ToolFormat
from worker.tool_parsers import Llama3JSONParser, MistralParser, TaggedJSONParser, ToolCallParser

# Outputs in each family's format, as its models write them (spacing included).
QWEN_TWO_CALLS = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}\n</tool_call>'
)
HERMES_TEXT_THEN_CALL = 'Let me check.\n<tool_call>\n{"name": "search", "arguments": {"query": "a \\"quoted\\" {brace}", "n": [1, 2]}}\n</tool_call>'
LLAMA3_CALL = '{"name": "get_weather", "parameters": {"city": "San Francisco, CA"}}'
LLAMA3_TAGGED = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}'
MISTRAL_V3 = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]'
MISTRAL_V11 = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
FALLBACK_CALL = 'Sure. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'


def run(parser: ToolCallParser, text: str, size: int) -> tuple[str, list[dict]]:
    content: list[str] = []
    pieces = []
    for i in range(0, len(text), size):
        c, p = parser.feed(text[i : i + size])
        content.append(c)
        pieces += p
    c, p = parser.finish()
    content.append(c)
    pieces += p
    calls: dict[int, dict] = {}
    for piece in pieces:
        call = calls.setdefault(piece.index, {"id": None, "name": None, "arguments": ""})
        if piece.id is not None:
            assert call["id"] is None, "a call's id comes once"
            call["id"], call["name"] = piece.id, piece.name
        else:
            assert call["id"] is not None, "arguments before the call's first piece"
        call["arguments"] += piece.arguments
    out = [calls[i] for i in sorted(calls)]
    for call in out:
        call["arguments"] = json.loads(call["arguments"])
    return "".join(content), out


SIZES = [1, 2, 3, 7, 10_000]


@pytest.mark.parametrize("size", SIZES)
def test_qwen_hermes_two_calls(size):
    content, calls = run(TaggedJSONParser(), QWEN_TWO_CALLS, size)
    assert content == ""
    assert [(c["name"], c["arguments"]) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"timezone": "Europe/Paris"})
    ]
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]


@pytest.mark.parametrize("size", SIZES)
def test_text_before_a_call_is_content(size):
    content, calls = run(TaggedJSONParser(), HERMES_TEXT_THEN_CALL, size)
    assert content == "Let me check.\n"
    assert calls[0]["arguments"] == {"query": 'a "quoted" {brace}', "n": [1, 2]}


@pytest.mark.parametrize("size", SIZES)
def test_llama3_json(size):
    content, calls = run(Llama3JSONParser(), LLAMA3_CALL, size)
    assert content == "" and calls[0]["name"] == "get_weather" and calls[0]["arguments"] == {"city": "San Francisco, CA"}
    content, calls = run(Llama3JSONParser(), LLAMA3_TAGGED, size)
    assert content == "" and [c["name"] for c in calls] == ["a", "b"]


@pytest.mark.parametrize("size", SIZES)
def test_llama3_plain_answer_is_content(size):
    text = "The weather is {nice} today."
    assert run(Llama3JSONParser(), text, size) == (text, [])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("text", [MISTRAL_V3, MISTRAL_V11])
def test_mistral(size, text):
    parser = MistralParser()
    content, calls = run(parser, text, size)
    assert content == ""
    assert calls[0]["name"] == "get_weather" and calls[0]["arguments"] == {"city": "Paris"}
    assert len(calls[0]["id"]) == 9 and calls[0]["id"].isalnum()


@pytest.mark.parametrize("size", SIZES)
def test_fallback_format(size):
    content, calls = run(FALLBACK.parser(None), FALLBACK_CALL, size)
    assert content == "Sure. " and calls[0]["arguments"] == {"a": 2, "b": 3}


def test_arguments_stream_before_the_call_ends():
    p = TaggedJSONParser()
    _, first = p.feed('<tool_call>{"name": "write", "arguments": {"text": "hel')
    assert first[0].name == "write" and first[0].id
    assert "".join(x.arguments for x in first[1:]) == '{"text": "hel'
    _, more = p.feed('lo"}}</tool_call>')
    assert "".join(x.arguments for x in more) == 'lo"}'


@pytest.mark.parametrize("size", SIZES)
def test_text_that_only_looks_like_a_call_is_content(size):
    text = "Use <tool_call> tags like <tool_call>this</tool_call> please"
    content, calls = run(TaggedJSONParser(), text, size)
    assert calls == [] and content == text


def test_unusual_key_order_is_parsed_whole():
    text = '<tool_call>{"arguments": {"q": 1}, "name": "f"}</tool_call>'
    content, calls = run(TaggedJSONParser(), text, 4)
    assert content == "" and calls == [{"id": calls[0]["id"], "name": "f", "arguments": {"q": 1}}]


def test_a_call_cut_short_keeps_what_was_streamed():
    p = TaggedJSONParser()
    _, pieces = p.feed('<tool_call>{"name": "f", "arguments": {"a": "unfinish')
    _, tail = p.finish()
    assert pieces[0].name == "f" and tail == []
    assert "".join(x.arguments for x in pieces) == '{"a": "unfinish'


def test_parallel_false_keeps_the_first_call_only():
    p = TaggedJSONParser()
    p.limit = 1
    content, calls = run(p, QWEN_TWO_CALLS, 5)
    assert [c["name"] for c in calls] == ["get_weather"] and content == ""


def test_parallel_false_ends_generation_after_the_first_call():
    p = TaggedJSONParser()
    p.limit = 1
    p.feed('<tool_call>{"name": "f", "arguments": {}}')
    assert not p.done
    p.feed("</tool_call>")
    assert p.done


def test_other_mlx_lm_families_are_parsed_whole():
    fmt = ToolFormat("qwen3_coder", True, "<tool_call>", "</tool_call>")
    text = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
    content, calls = run(fmt.parser([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]), text, 3)
    assert content == "" and calls[0]["name"] == "get_weather" and calls[0]["arguments"] == {"city": "Paris"}


def test_single_token_markers_are_asked_for_as_tokens():
    """Qwen's <tool_call> is one added token: a forced call must use it, not spell it."""
    from protocol.messages import ToolChoice
    from worker.grammar import tool_call_grammar
    from worker.tool_format import ToolPlan

    plan = ToolPlan(ToolFormat("hermes", True), [{"type": "function", "function": {"name": "f", "parameters": {}}}], ToolChoice("required"))
    spelled = tool_call_grammar(plan)
    assert '"<tool_call>"' in spelled and "<[" not in spelled
    as_tokens = tool_call_grammar(plan, tokens={"<tool_call>": 151657, "</tool_call>": 151658})
    assert "<[151657]>" in as_tokens and "<[151658]>" in as_tokens
