"""The gateway's validation of agent fields: what reaches the worker, and
OpenAI-shaped 400s naming the field for what cannot work."""

from __future__ import annotations

import json

import pytest

from gateway.errors import APIError
from gateway.schemas import parse_chat_request
from protocol.messages import ResponseFormat, ToolChoice

MSGS = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def parse(**fields):
    return parse_chat_request(json.dumps({"messages": MSGS, **fields}).encode())


def refused(**fields) -> APIError:
    with pytest.raises(APIError) as info:
        parse(**fields)
    assert info.value.status == 400
    return info.value


def test_unset_sampling_fields_travel_as_none():
    s = parse().sampling()
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty, s.presence_penalty) == (None,) * 6
    s = parse(temperature=0, presence_penalty=-2, frequency_penalty=2, logit_bias={"42": -100, "7": 5.5}).sampling()
    assert s.temperature == 0.0 and s.presence_penalty == -2 and s.frequency_penalty == 2
    assert s.logit_bias == {42: -100.0, 7: 5.5}


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": "high"}, "frequency_penalty"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"store": True}, "store"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f"}}]}]}, "messages[0].tool_calls[0].function.arguments"),
    ],
)
def test_refused_with_the_field_named(fields, param):
    err = refused(**fields)
    assert err.param == param, err.message
    assert err.message


def test_harmless_values_of_refused_fields_pass():
    parse(store=False, modalities=["text"], audio=None, user="u1", metadata={"a": "b"}, service_tier="auto")


def test_tools_and_choices_on_the_wire():
    wire = parse(tools=[TOOL]).agent_fields()
    assert wire["tool_choice"] == ToolChoice("auto") and wire["parallel_tool_calls"] is True
    assert wire["tools"][0]["function"]["name"] == "get_weather"
    assert parse().agent_fields()["tool_choice"] == ToolChoice("none")
    wire = parse(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}}, parallel_tool_calls=False).agent_fields()
    assert wire["tool_choice"] == ToolChoice("function", "get_weather") and wire["parallel_tool_calls"] is False
    bare = parse(tools=[{"type": "function", "function": {"name": "noargs"}}]).agent_fields()["tools"][0]["function"]
    assert bare["parameters"] == {"type": "object", "properties": {}}


def test_response_formats_on_the_wire():
    assert parse().agent_fields()["response_format"] == ResponseFormat()
    assert parse(response_format={"type": "json_object"}).agent_fields()["response_format"] == ResponseFormat("json_object")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    rf = parse(response_format={"type": "json_schema", "json_schema": {"name": "A", "schema": schema, "strict": True}}).agent_fields()["response_format"]
    assert rf == ResponseFormat("json_schema", schema=schema, name="A")


def test_history_with_tool_calls_keeps_arguments_as_sent():
    msgs = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = parse_chat_request(json.dumps({"messages": msgs}).encode())
    wire = body.wire_messages()
    assert wire[1]["tool_calls"][0]["function"]["arguments"] == "{\"city\": \"Paris\"}"
    assert wire[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
