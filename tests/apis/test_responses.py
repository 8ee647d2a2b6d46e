"""`/v1/responses` with the OpenAI SDK against real processes: create,
stream (the SDK's own accumulator), stored chains that reuse the previous
turn's KV (cached tokens), retrieve / delete / input items, refusals."""

from __future__ import annotations

import json

import openai
import pytest

GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def client(tiny_stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_stack.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def smol(smol_stack):
    return openai.OpenAI(base_url=smol_stack.base_url, api_key="unused", max_retries=0, timeout=120)


def test_create_returns_a_response_object(client):
    r = client.responses.create(model="tiny", input="Hello", max_output_tokens=6, **GREEDY)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "kmlx-tiny-llama"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert [o.type for o in r.output] == ["message"] and r.output[0].role == "assistant"
    assert r.output_text == r.output[0].content[0].text and r.output_text
    assert r.usage.output_tokens == 6 and r.usage.total_tokens == r.usage.input_tokens + 6
    assert r.store is True and r.metadata == {}


def test_stream_events_match_the_whole_response(client):
    whole = client.responses.create(model="tiny", input="Tell me a story", max_output_tokens=8, **GREEDY)
    events = list(client.responses.create(model="tiny", input="Tell me a story", max_output_tokens=8, stream=True, **GREEDY))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert events[-1].response.output_text == whole.output_text and events[-1].response.usage.output_tokens == 8


def test_the_sdks_stream_helper_accumulates_a_completed_response(smol):
    with smol.responses.stream(model="m", input="What is the capital of France?", max_output_tokens=60, **GREEDY) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas)
    assert "Paris" in final.output_text


def test_a_chain_reuses_the_previous_turns_kv(smol):
    first = smol.responses.create(model="m", input="Name three fruits.", instructions="Be brief.", max_output_tokens=30, **GREEDY)
    # A new chain: at most the template's opening tokens are cached (shared by every prompt).
    assert first.usage.input_tokens_details.cached_tokens < 5
    second = smol.responses.create(model="m", input="And three vegetables?", instructions="Be brief.",
                                   previous_response_id=first.id, max_output_tokens=30, **GREEDY)
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= first.usage.input_tokens + first.usage.output_tokens - 1  # turn 1, its reply included
    assert second.usage.input_tokens - cached < 20  # only the new turn is prefilled
    assert second.previous_response_id == first.id
    # The model saw turn 1: asked to repeat it, it does.
    third = smol.responses.create(model="m", input="Repeat your first list, exactly.", instructions="Be brief.",
                                  previous_response_id=second.id, max_output_tokens=30, **GREEDY)
    fruit = [w for w in ("Apple", "Banana", "Orange", "Grape", "Mango", "Pear", "Cherr") if w.lower() in first.output_text.lower()]
    assert fruit and any(w.lower() in third.output_text.lower() for w in fruit)


def test_instructions_are_not_carried_to_the_next_turn(client):
    first = client.responses.create(model="tiny", input="Hi", instructions="You are terse.", max_output_tokens=2, **GREEDY)
    with_them = client.responses.create(model="tiny", input="Again", instructions="You are terse.", previous_response_id=first.id,
                                        max_output_tokens=1, **GREEDY)
    without = client.responses.create(model="tiny", input="Again", previous_response_id=first.id, max_output_tokens=1, **GREEDY)
    assert without.instructions is None and with_them.usage.input_tokens != without.usage.input_tokens


def test_retrieve_delete_and_input_items(client):
    r = client.responses.create(model="tiny", input=[{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"},
                                                      {"role": "user", "content": [{"type": "input_text", "text": "Three"}]}],
                                max_output_tokens=2, metadata={"k": "v"}, **GREEDY)
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.metadata == {"k": "v"}
    items = client.responses.input_items.list(r.id, order="asc")
    assert [i.role for i in items.data] == ["user", "assistant", "user"] and items.data[2].content[0].text == "Three"
    page = client.responses.input_items.list(r.id, limit=1)
    assert len(page.data) == 1 and page.has_more and page.data[0].content[0].text == "Three"  # newest first
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model="tiny", input="x", previous_response_id=r.id, max_output_tokens=1)
    assert err.value.body["param"] == "previous_response_id"


def test_unstored_responses_cannot_be_fetched_or_continued(client):
    r = client.responses.create(model="tiny", input="x", store=False, max_output_tokens=1)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_history_items_translate_to_chat_turns(client):
    items = [
        {"type": "message", "role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\": \"Paris\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]
    r = client.responses.create(model="tiny", input=items, max_output_tokens=2, **GREEDY)
    assert r.usage.input_tokens > 10 and r.status == "incomplete"


@pytest.mark.parametrize("extra,param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice.type"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"truncation": "auto"}, "truncation"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"include": ["file_search_call.results"]}, "include[0]"),
    ({"input": [{"type": "web_search_call", "id": "x"}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0]"),
    ({"max_output_tokens": 10**7}, "max_output_tokens"),
])
def test_what_cannot_be_honoured_is_a_400_naming_it(client, extra, param):
    body = {"model": "tiny", "input": "x", **extra}
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(**body)
    assert err.value.body["param"] == param, err.value.body


def test_an_image_for_a_text_model_is_named_as_sent(client):
    png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    content = [{"type": "input_text", "text": "What is it?"}, {"type": "input_image", "image_url": png}]
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="tiny", instructions="sys", input=[{"role": "user", "content": content}], max_output_tokens=1)
    assert err.value.body["param"] == "input[0].content[1]"


WEATHER = {
    "type": "function", "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
                   "additionalProperties": False},
}


def test_a_forced_function_call_streamed_or_not_then_its_output_continues_the_chain(client):
    forced = {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}}
    r = client.responses.create(model="tiny", input="Weather in Paris?", max_output_tokens=80, **forced, **GREEDY)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert r.status == "completed" and call.name == "get_weather" and set(json.loads(call.arguments)) == {"city"}
    assert call.id.startswith("fc_") and call.call_id
    with client.responses.stream(model="tiny", input="Weather in Paris?", max_output_tokens=80, **forced, **GREEDY) as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    assert [o.type for o in final.output] == [o.type for o in r.output] and final.output[-1].arguments == call.arguments
    # The same tools and choice (they shape the system prompt): the chain's KV serves all of turn 1.
    follow = client.responses.create(model="tiny", previous_response_id=r.id, max_output_tokens=3, **forced,
                                     input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}], **GREEDY)
    assert follow.usage.input_tokens_details.cached_tokens >= r.usage.input_tokens
    assert follow.tools[0].name == "get_weather"


def test_text_format_json_schema_with_the_sdks_parse(client):
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        name: str = Field(max_length=10)
        age: int = Field(ge=0, le=150)

    r = client.responses.parse(model="tiny", input="A person", text_format=Person, max_output_tokens=60, **GREEDY)
    assert isinstance(r.output_parsed, Person) and r.status == "completed"


def test_logprobs_streamed_and_whole(client):
    ask = {"model": "tiny", "input": "Hello", "max_output_tokens": 5, "include": ["message.output_text.logprobs"], "top_logprobs": 2, **GREEDY}
    r = client.responses.create(**ask)
    lps = r.output[0].content[0].logprobs
    assert len(lps) == 5 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lps)
    assert "".join(t.token for t in lps) == r.output_text
    events = list(client.responses.create(**ask, stream=True))
    streamed = [t for e in events if e.type == "response.output_text.delta" for t in e.logprobs]
    assert [t.token for t in streamed] == [t.token for t in lps]
