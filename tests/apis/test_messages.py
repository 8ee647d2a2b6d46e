"""`/v1/messages` and `/v1/messages/count_tokens` with the official Anthropic
SDK against real gateway + worker processes (tiny model for shapes, the
real SmolLM2 where the answer must read right)."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import pytest
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.support.e2e import starts_processes
from tests.support.processes import start_stack

GREEDY = {"temperature": 0.0}  # this SDK no longer has a temperature argument
STREAM_EVENT = TypeAdapter(RawMessageStreamEvent)  # validates: a missing or mistyped field fails


@pytest.fixture(scope="module")
def client(tiny_stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=tiny_stack.root_url, api_key="unused", max_retries=0, timeout=60)


def conv(name: str) -> dict:
    """A conversation of the test's own, so no other test's cache serves it."""
    return {**GREEDY, "conversation": f"{name}-{time.time_ns()}"}


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_create_returns_a_message_with_usage(client):
    m = client.messages.create(model="claude-local", max_tokens=8, messages=ask("Hello"), extra_body=conv("create"))
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.model == "kmlx-tiny-llama"  # Anthropic model names are served by the pool's model
    assert [b.type for b in m.content] == ["text"] and m.content[0].text
    assert m.stop_reason == "max_tokens" and m.stop_sequence is None
    assert m.usage.output_tokens == 8
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens > 5


def test_stream_is_anthropics_event_sequence_and_matches_create(client, tiny_stack):
    body = {"model": "m", "max_tokens": 10, "messages": ask("Tell me a story"), **GREEDY}
    full = client.messages.create(**{k: v for k, v in body.items() if k != "temperature"}, extra_body=GREEDY)
    with client.messages.stream(model="m", max_tokens=10, messages=ask("Tell me a story"), extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == full.content[0].text == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10
    # The raw events, pings included, in Anthropic's order, each valid as the SDK's type.
    with httpx.stream("POST", f"{tiny_stack.root_url}/v1/messages", json={**body, "stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in data] == names
    for d in data:
        if d["type"] != "ping":
            STREAM_EVENT.validate_python(d)
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) <= {"content_block_delta", "ping"} and "content_block_delta" in names
    assert data[-2]["delta"]["stop_reason"] == "max_tokens" and data[-2]["usage"]["output_tokens"] == 10


def test_stop_sequence_is_reported_and_never_emitted(client):
    base = client.messages.create(model="m", max_tokens=24, messages=ask("Count"), extra_body=GREEDY).content[0].text
    stop = base[len(base) // 2 : len(base) // 2 + 3]
    m = client.messages.create(model="m", max_tokens=24, messages=ask("Count"), stop_sequences=[stop], extra_body=GREEDY)
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert m.content[0].text == base[: base.index(stop)]
    with client.messages.stream(model="m", max_tokens=24, messages=ask("Count"), stop_sequences=[stop], extra_body=GREEDY) as s:
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_count_tokens_is_the_prompt_size_usage_reports(client):
    system = "You answer in one word."
    messages = [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue"}, {"role": "user", "content": "Another"}]
    counted = client.messages.count_tokens(model="m", system=system, messages=messages).input_tokens
    m = client.messages.create(model="m", max_tokens=2, system=system, messages=messages, extra_body=conv("count"))
    assert counted == m.usage.input_tokens + m.usage.cache_read_input_tokens
    longer = client.messages.count_tokens(model="m", system=system + " Never explain.", messages=messages).input_tokens
    assert longer == counted + 3  # " Never explain." is three more tokens


def test_the_beta_namespace_claude_code_uses_is_the_same_endpoint(client):
    # client.beta.messages posts to /v1/messages?beta=true with anthropic-beta headers, as Claude Code does.
    counted = client.messages.count_tokens(model="m", messages=ask("Hi")).input_tokens
    beta = client.beta.messages.count_tokens(model="m", messages=ask("Hi"), betas=["token-counting-2024-11-01"])
    assert beta.input_tokens == counted
    m = client.beta.messages.create(model="m", max_tokens=3, messages=ask("Hi"), betas=["interleaved-thinking-2025-05-14"],
                                    extra_body=GREEDY)
    assert m.usage.output_tokens == 3 and m.stop_reason == "max_tokens"
    with client.beta.messages.stream(model="m", max_tokens=3, messages=ask("Hi"), extra_body=GREEDY) as s:
        assert s.get_final_message().content[0].text == m.content[0].text


def test_system_blocks_and_a_prefilled_assistant_turn(client):
    blocks = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}]
    one = client.messages.count_tokens(model="m", system=blocks, messages=ask("Hi")).input_tokens
    joined = client.messages.count_tokens(model="m", system="Be brief.\n\nBe kind.", messages=ask("Hi")).input_tokens
    assert one == joined
    prefilled = ask("Hi") + [{"role": "assistant", "content": "Well,"}]
    m = client.messages.create(model="m", max_tokens=4, messages=prefilled, extra_body=GREEDY)
    assert m.usage.output_tokens == 4  # continues the assistant's text rather than starting a new turn


def test_errors_have_anthropics_shape(client, tiny_stack):
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="m", max_tokens=0, messages=ask("x"))
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in err.value.body["error"]["message"]
    r = httpx.post(f"{tiny_stack.root_url}/v1/messages", json={"model": "m", "messages": ask("x")}, timeout=30)
    assert r.status_code == 400 and r.json() == {
        "type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    r = httpx.post(f"{tiny_stack.root_url}/v1/messages", content=b"{not json", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("field,value", [
    ("tools", [{"type": "web_search_20250305", "name": "web_search"}]),
    ("mcp_servers", [{"type": "url", "url": "https://example.com", "name": "x"}]),
    ("container", "c1"),
    ("speed", "fast"),
])
def test_fields_kmlx_cannot_honour_are_400s_naming_them(client, field, value):
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="m", max_tokens=4, messages=ask("x"), extra_body={field: value})
    assert err.value.body["error"]["message"].startswith(f"{field}")


WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
                     "additionalProperties": False},
}


def test_a_forced_tool_use_streamed_or_not_and_its_result_in_history(client):
    forced = {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}}
    m = client.messages.create(model="m", max_tokens=80, messages=ask("Weather in Paris?"), extra_body=GREEDY, **forced)
    assert m.stop_reason == "tool_use"
    (use,) = [b for b in m.content if b.type == "tool_use"]
    assert use.name == "get_weather" and set(use.input) == {"city"} and isinstance(use.input["city"], str)
    with client.messages.stream(model="m", max_tokens=80, messages=ask("Weather in Paris?"), extra_body=GREEDY, **forced) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == [b.type for b in m.content] and final.content[-1].input == use.input
    history = ask("Weather in Paris?") + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]},
    ]
    follow = client.messages.create(model="m", max_tokens=3, tools=[WEATHER], messages=history, extra_body=GREEDY)
    assert follow.usage.output_tokens == 3
    with_tools = client.messages.count_tokens(model="m", tools=[WEATHER], messages=ask("Weather in Paris?")).input_tokens
    assert with_tools > client.messages.count_tokens(model="m", messages=ask("Weather in Paris?")).input_tokens + 10


def test_any_tool_without_parallel_calls_gives_exactly_one(client):
    second = {**WEATHER, "name": "get_time", "description": "The time in a city"}
    m = client.messages.create(model="m", max_tokens=120, messages=ask("Weather and time in Paris?"), tools=[WEATHER, second],
                               tool_choice={"type": "any", "disable_parallel_tool_use": True}, extra_body=GREEDY)
    assert m.stop_reason == "tool_use" and [b.name for b in m.content if b.type == "tool_use"] in (["get_weather"], ["get_time"])


def test_output_config_format_is_enforced(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
              "required": ["name", "age"], "additionalProperties": False}
    m = client.messages.create(model="m", max_tokens=60, messages=ask("A person, as JSON"), extra_body=GREEDY,
                               output_config={"format": {"type": "json_schema", "schema": schema}})
    value = json.loads(m.content[0].text)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int) and m.stop_reason == "end_turn"
    with pytest.raises(anthropic.BadRequestError) as err:  # a schema feature the grammar engine cannot enforce
        client.messages.create(model="m", max_tokens=5, messages=ask("x"),
                               output_config={"format": {"type": "json_schema", "schema": {"not": {"type": "string"}}}})
    assert err.value.body["error"]["message"].startswith("output_config.format")


def test_image_blocks_reach_the_media_checks_named_as_sent(client):
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    content = [{"type": "text", "text": "What is this?"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}]
    with pytest.raises(anthropic.BadRequestError) as err:  # the tiny model reads no images
        client.messages.create(model="m", max_tokens=4, system="sys", messages=[{"role": "user", "content": content}])
    assert err.value.body["error"]["message"].startswith("messages[0].content[1]: ")
    assert "does not accept images" in err.value.body["error"]["message"]


@pytest.fixture(scope="module")
@starts_processes
def vision_client(tiny_vlm_path, log_dir):
    stack = start_stack(tiny_vlm_path, log_dir)
    yield anthropic.Anthropic(base_url=stack.root_url, api_key="unused", max_retries=0, timeout=120)
    stack.stop()


@pytest.fixture(scope="module")
def tiny_vlm_path():
    from worker.vision.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm()


def test_a_vision_model_reads_image_blocks(vision_client):
    import base64

    from tests.vision.samples import image_bytes

    data = base64.b64encode(image_bytes("green")).decode()
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}, {"type": "text", "text": "Colour?"}]
    with_image = vision_client.messages.count_tokens(model="m", messages=[{"role": "user", "content": content}]).input_tokens
    text_only = vision_client.messages.count_tokens(model="m", messages=[{"role": "user", "content": "Colour?"}]).input_tokens
    assert with_image > text_only + 4  # the image's own tokens are counted
    m = vision_client.messages.create(model="m", max_tokens=3, messages=[{"role": "user", "content": content}], extra_body=GREEDY)
    assert m.usage.output_tokens == 3 and m.usage.input_tokens + m.usage.cache_read_input_tokens == with_image


@pytest.fixture(scope="module")
def smol_client(smol_stack):
    return anthropic.Anthropic(base_url=smol_stack.root_url, api_key="unused", max_retries=0, timeout=120)


def test_the_real_model_answers_through_messages(smol_client):
    m = smol_client.messages.create(
        model="m", max_tokens=24, system="Answer with the city name only.",
        messages=ask("What is the capital of France?"), extra_body=GREEDY,
    )
    assert "Paris" in m.content[0].text and m.stop_reason == "end_turn"


def test_a_second_turn_reads_the_first_from_the_cache(smol_client):
    c = conv("turns")
    first = smol_client.messages.create(model="m", max_tokens=12, messages=ask("Name three fruits."), extra_body=c)
    history = ask("Name three fruits.") + [{"role": "assistant", "content": first.content[0].text}, {"role": "user", "content": "And vegetables?"}]
    second = smol_client.messages.create(model="m", max_tokens=6, messages=history, extra_body=c)
    prompt_first = first.usage.input_tokens + first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens >= prompt_first  # the whole first turn, reply included
    assert second.usage.input_tokens < 15  # only the new turn was prefilled
