"""The Messages request as the chat body it means (pure translation, no processes)."""

from __future__ import annotations

import json

import pytest

from gateway.anthropic_schema import parse_messages_request, to_chat

WEATHER = {"name": "weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def chat_of(**fields) -> dict:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **fields}
    return to_chat(parse_messages_request(json.dumps(body).encode()))[0]


@pytest.mark.parametrize("choice,expected", [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
])
def test_each_tool_choice_is_chats_equivalent(choice, expected):
    chat = chat_of(tools=[WEATHER], tool_choice=choice)
    assert chat["tool_choice"] == expected and "parallel_tool_calls" not in chat
    assert chat["tools"] == [{"type": "function", "function": {"name": "weather", "parameters": WEATHER["input_schema"]}}]


def test_disable_parallel_tool_use_is_parallel_tool_calls_false():
    assert chat_of(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": True})["parallel_tool_calls"] is False


def test_sampling_fields_and_stop_sequences_carry_over():
    chat = chat_of(temperature=0.3, top_p=0.9, top_k=20, stop_sequences=["END"], metadata={"user_id": "u1"})
    assert (chat["temperature"], chat["top_p"], chat["top_k"], chat["stop"]) == (0.3, 0.9, 20, ["END"])


def test_history_tool_use_and_result_become_a_call_and_a_tool_turn():
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": ""},
                                          {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "rain"}],
                                      "is_error": True}, {"type": "text", "text": "Umbrella?"}]},
    ]
    chat = chat_of(system=[{"type": "text", "text": "Be brief."}], messages=messages)
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "Error: rain"},
        {"role": "user", "content": [{"type": "text", "text": "Umbrella?"}]},
    ]


def test_thinking_disabled_strips_reasoning_from_the_answer():
    assert chat_of(thinking={"type": "disabled"})["strip_thinking"] is True
    assert chat_of()["strip_thinking"] is True  # left out: as Anthropic's API, no thinking blocks
    assert "strip_thinking" not in chat_of(thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2048)
