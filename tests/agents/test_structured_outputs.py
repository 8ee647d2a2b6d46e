"""Constrained decoding end to end on the tiny random-weight model, where
only the grammar can make the output valid: response_format, forced tool
calls in the fallback format (the tiny model's template has no tools) and
in the Hermes format (a template with tools), streaming and not, with the
OpenAI SDK as the client."""

from __future__ import annotations

import json
import threading
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.agents.conftest import sdk

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "metric": {"type": "boolean"},
    },
    "required": ["city", "days", "metric"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"], "additionalProperties": False}}},
]
ASK = [{"role": "user", "content": "What's the weather in Paris for 3 days?"}]


def valid_weather(args: dict) -> bool:
    return (set(args) == {"city", "days", "metric"} and args["city"] in ("Paris", "Tokyo", "Lima")
            and type(args["days"]) is int and 1 <= args["days"] <= 7 and type(args["metric"]) is bool)


def valid_call(name: str, args: dict) -> bool:
    return valid_weather(args) if name == "get_weather" else (name == "get_time" and args in ({"zone": "UTC"}, {"zone": "CET"}))


@pytest.fixture(scope="module")
def client(tiny_stack) -> openai.OpenAI:
    return sdk(tiny_stack)


def test_json_schema_makes_random_weights_valid(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER, "strict": True}}
    for temperature in (0.0, 1.0):
        r = client.chat.completions.create(model="m", messages=ASK, response_format=fmt, max_tokens=60, temperature=temperature)
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        assert valid_weather(json.loads(r.choices[0].message.content))
    # without the grammar the same model writes no JSON at all
    r = client.chat.completions.create(model="m", messages=ASK, max_tokens=30, temperature=0)
    with pytest.raises(ValueError):
        json.loads(r.choices[0].message.content)


def test_json_schema_streamed(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER}}
    chunks = list(client.chat.completions.create(model="m", messages=ASK, response_format=fmt, max_tokens=60, stream=True, seed=5))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert valid_weather(json.loads(text))


class Forecast(BaseModel):
    city: Literal["Paris", "Tokyo"]
    days: int = Field(ge=1, le=3)
    windy: bool


def test_sdk_parse_with_a_pydantic_model(client):
    r = client.chat.completions.parse(model="m", messages=ASK, response_format=Forecast, max_tokens=60, temperature=0.7, seed=3)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Forecast) and 1 <= parsed.days <= 3


def test_unsupported_schema_feature_is_a_400_naming_it(client):
    bad = {"type": "object", "properties": {"x": {"not": {"type": "string"}}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=ASK, max_tokens=5,
                                       response_format={"type": "json_schema", "json_schema": {"name": "b", "schema": bad}})
    assert info.value.body["param"] == "response_format"
    assert "not" in info.value.body["message"]


@pytest.mark.parametrize("parallel", [True, False])
def test_required_tool_call_fallback_format(client, parallel):
    r = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=parallel,
                                       max_tokens=900, temperature=0.8, seed=11)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and (parallel or len(calls) == 1)
    assert choice.message.content is None
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert valid_call(call.function.name, json.loads(call.function.arguments))


def test_named_tool_call_streamed_in_openai_deltas(client):
    stream = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, max_tokens=80, stream=True,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    chunks = [c for c in stream if c.choices]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "<tool_call>" not in content and "{" not in content
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    first = deltas[0]
    assert first.index == 0 and first.id and first.type == "function" and first.function.name == "get_weather"
    assert all(d.id is None and d.function.name is None for d in deltas[1:])
    assert valid_weather(json.loads("".join(d.function.arguments or "" for d in deltas)))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_required_tool_call_native_hermes_format(hermes_stack):
    client = sdk(hermes_stack)
    plain = client.chat.completions.create(model="m", messages=ASK, max_tokens=1).usage.prompt_tokens
    r = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200,
                                       parallel_tool_calls=False)
    assert r.usage.prompt_tokens > plain + 50  # the template rendered the tools itself
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and calls
    assert all(valid_call(c.function.name, json.loads(c.function.arguments)) for c in calls)


@pytest.mark.parametrize("which", ["fallback", "hermes"])
def test_tool_history_round_trip(which, tiny_stack, hermes_stack):
    client = sdk(tiny_stack if which == "fallback" else hermes_stack)
    first = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, max_tokens=80,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "12:00"},
    ]
    again = client.chat.completions.create(model="m", messages=history, tools=TOOLS, max_tokens=4)
    assert again.usage.prompt_tokens > first.usage.prompt_tokens
    # arguments as an object (some clients send that) render the same way
    history[1]["tool_calls"][0]["function"]["arguments"] = json.loads(call.function.arguments)
    same = client.chat.completions.create(model="m", messages=history, tools=TOOLS, max_tokens=4)
    assert same.usage.prompt_tokens == again.usage.prompt_tokens


def test_a_constrained_neighbour_leaves_other_sequences_alone(client):
    plain = dict(model="m", messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=40, temperature=0,
                 extra_body={"conversation": "neighbour-solo"})
    alone = client.chat.completions.create(**plain).choices[0].message.content
    results: dict[str, str] = {}

    def constrained():
        r = client.chat.completions.create(model="m", messages=ASK, max_tokens=60, temperature=0,
                                           response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}})
        results["json"] = r.choices[0].message.content

    threads = [threading.Thread(target=constrained) for _ in range(2)]
    for t in threads:
        t.start()
    together = client.chat.completions.create(**{**plain, "extra_body": {"conversation": "neighbour-batched"}}).choices[0].message.content
    for t in threads:
        t.join(60)
    assert together == alone
    assert valid_weather(json.loads(results["json"]))
