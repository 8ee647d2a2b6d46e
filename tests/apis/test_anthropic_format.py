"""The Messages stream and body built from worker outputs, checked by the
Anthropic SDK's own stream accumulator and validated against its types,
required fields included (no processes)."""

from __future__ import annotations

import json

from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from gateway.anthropic_format import MessagesReply
from gateway.dispatch import Admitted
from gateway.errors import APIError
from protocol.messages import CacheDecision, RequestOutput, ToolCallDelta, Usage

# Validation, not the SDK's lenient construction: a missing or mistyped field fails.
EVENT = TypeAdapter(RawMessageStreamEvent)
FIRST = RequestOutput("r", cache_decision=CacheDecision("hit", 20, 5), prompt_tokens=25)


def outs() -> list[RequestOutput]:
    usage = Usage(prompt_tokens=25, completion_tokens=6, cached_tokens=20)
    return [
        FIRST,
        RequestOutput("r", reasoning="Let me "),
        RequestOutput("r", reasoning="think."),
        RequestOutput("r", reasoning="", content="It is "),
        RequestOutput("r", content="42.", finish_reason="stop", stop_sequence="\n\n", usage=usage),
    ]


def parse(stream: bytes) -> list[dict]:
    events = []
    for chunk in stream.decode().split("\n\n"):
        if not chunk:
            continue
        name, data = chunk.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data[len("data: "):])
        assert payload["type"] == name[len("event: "):]
        events.append(payload)
    return events


def stream_of(batches: list[list[RequestOutput]]) -> list[dict]:
    reply = MessagesReply(Admitted("msg_1", "model-x", "conv", FIRST, 0))
    raw = b"".join(reply.open())
    for batch in batches:
        raw += b"".join(reply.delta(batch))
    raw += b"".join(reply.close(batch[-1]))
    return parse(raw)


def test_thinking_then_text_is_two_blocks_in_anthropics_order():
    o = outs()
    events = stream_of([o[:2], o[2:4], o[4:]])
    assert [e["type"] for e in events] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]
    assert events[2]["content_block"]["type"] == "thinking" and events[6]["content_block"]["type"] == "text"
    assert events[0]["message"]["usage"] == {"input_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 20, "output_tokens": 0}
    snapshot = None
    for e in events:
        if e["type"] != "ping":
            snapshot = accumulate_event(event=EVENT.validate_python(e), current_snapshot=snapshot, json_bufs={})
    assert snapshot.content[0].thinking == "Let me think." and snapshot.content[1].text == "It is 42."
    assert snapshot.stop_reason == "stop_sequence" and snapshot.stop_sequence == "\n\n"
    assert snapshot.usage.output_tokens == 6 and snapshot.usage.cache_read_input_tokens == 20 and snapshot.usage.input_tokens == 5


def test_a_batch_merges_runs_but_keeps_their_order():
    events = stream_of([outs()])
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == [{"type": "thinking_delta", "thinking": "Let me think."}, {"type": "text_delta", "text": "It is 42."}]


def test_the_body_matches_the_stream():
    reply = MessagesReply(Admitted("msg_1", "model-x", "conv", FIRST, 0))
    body = reply.body(outs())
    Message.model_validate(body)
    assert body["content"] == [{"type": "thinking", "thinking": "Let me think.", "signature": ""}, {"type": "text", "text": "It is 42."}]
    assert body["stop_reason"] == "stop_sequence" and body["usage"]["input_tokens"] == 5


def test_an_empty_answer_is_one_empty_text_block_both_ways():
    final = RequestOutput("r", finish_reason="stop", usage=Usage(prompt_tokens=3))
    events = stream_of([[FIRST, final]])
    for e in events[2:]:
        EVENT.validate_python(e)
    assert [e["type"] for e in events][2:5] == ["content_block_start", "content_block_stop", "message_delta"]
    body = MessagesReply(Admitted("m", "x", "c", FIRST, 0)).body([FIRST, final])
    assert body["content"] == [{"type": "text", "text": ""}] and body["stop_reason"] == "end_turn"


def test_a_failure_mid_stream_is_an_error_event():
    reply = MessagesReply(Admitted("m", "x", "c", FIRST, 0))
    (ev,) = parse(b"".join(reply.fail(APIError(503, "worker went away", code="worker_unavailable"))))
    assert ev == {"type": "error", "error": {"type": "overloaded_error", "message": "worker went away"}}


def tool_outs() -> list[RequestOutput]:
    usage = Usage(prompt_tokens=25, completion_tokens=9)
    return [
        FIRST,
        RequestOutput("r", content="Checking."),
        RequestOutput("r", tool_calls=[ToolCallDelta(0, id="call_a", name="weather", arguments='{"city": ')]),
        RequestOutput("r", tool_calls=[ToolCallDelta(0, arguments='"Paris"}')]),
        RequestOutput("r", tool_calls=[ToolCallDelta(1, id="call_b", name="time", arguments="{}")],
                      finish_reason="tool_calls", usage=usage),
    ]


def test_tool_calls_stream_as_tool_use_blocks_with_input_json_deltas():
    o = tool_outs()
    events = stream_of([o[:3], o[3:4], o[4:]])
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts == [{"type": "text", "text": ""}, {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}},
                      {"type": "tool_use", "id": "call_b", "name": "time", "input": {}}]
    json_deltas = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"]
    assert json_deltas == ['{"city": ', '"Paris"}', "{}"]
    snapshot = None
    bufs: dict = {}
    for e in events:
        if e["type"] != "ping":
            snapshot = accumulate_event(event=EVENT.validate_python(e), current_snapshot=snapshot, json_bufs=bufs)
    assert [b.type for b in snapshot.content] == ["text", "tool_use", "tool_use"]
    assert snapshot.content[1].input == {"city": "Paris"} and snapshot.content[2].input == {}
    assert snapshot.stop_reason == "tool_use"


def test_tool_calls_in_the_body_have_object_inputs():
    body = MessagesReply(Admitted("m", "x", "c", FIRST, 0)).body(tool_outs())
    Message.model_validate(body)
    assert body["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_b", "name": "time", "input": {}},
    ]
    assert body["stop_reason"] == "tool_use"
