"""The real default model (SmolLM2-135M-Instruct) driven as an agent would:
its published sampling defaults, a forced tool call in the fallback format
and the answer after the tool's result, a JSON object on request."""

from __future__ import annotations

import json

import pytest

from tests.agents.conftest import sdk
from tests.support.e2e import starts_processes
from tests.support.processes import start_stack

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"],
                       "additionalProperties": False},
    },
}


@pytest.fixture(scope="module")
@starts_processes
def real_stack(default_model_path, log_dir):
    stack = start_stack(default_model_path, log_dir)
    yield stack
    stack.stop()


def test_published_sampling_defaults_answer_the_readme_question(real_stack):
    # No temperature in the request: the model card's 0.2 / top_p 0.9 apply
    # (at 1.0 this model rambles: "I used to be a Losttowner, a ninja scout...").
    answers = [
        sdk(real_stack).chat.completions.create(
            model="default", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16, seed=seed,
        ).choices[0].message.content
        for seed in (1, 2, 3)
    ]
    assert sum("Paris" in a for a in answers) >= 2, answers
    assert "temperature 0.2 (published" in real_stack.workers[0].log()


def test_tool_call_round_trip(real_stack):
    client = sdk(real_stack)
    messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    first = client.chat.completions.create(model="default", messages=messages, tools=[WEATHER_TOOL], tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=40, temperature=0)
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = msg.tool_calls
    assert call.function.name == "get_weather"
    assert "paris" in json.loads(call.function.arguments)["city"].lower()
    messages += [msg.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees Celsius"}]
    answer = client.chat.completions.create(model="default", messages=messages, tools=[WEATHER_TOOL], max_tokens=40, temperature=0)
    text = answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length") and not answer.choices[0].message.tool_calls
    assert "24" in text or "sunny" in text.lower(), text


def test_json_object_mode(real_stack):
    r = sdk(real_stack).chat.completions.create(
        model="default", response_format={"type": "json_object"}, max_tokens=60, temperature=0,
        messages=[{"role": "user", "content": "Give the capital of France as JSON with the key \"capital\"."}])
    assert isinstance(json.loads(r.choices[0].message.content), dict)
