"""The Responses stream built from worker outputs, every event validated
against the OpenAI SDK's types (no processes)."""

from __future__ import annotations

import json

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.dispatch import Admitted
from gateway.errors import APIError
from gateway.responses_format import ResponsesReply
from gateway.responses_schema import parse_response_request
from protocol.messages import CacheDecision, RequestOutput, ToolCallDelta, Usage

FIRST = RequestOutput("r", cache_decision=CacheDecision("none", 0, 5), prompt_tokens=5)


def reply(stored: list) -> ResponsesReply:
    body = parse_response_request(json.dumps({"input": "hi", "stream": True}).encode())
    return ResponsesReply(Admitted("r", "m", "c", FIRST, 0), body, "resp_1", lambda response, output: stored.append((response, output)))


# Validation, not the SDK's lenient construction: a missing or mistyped field fails.
EVENT = TypeAdapter(ResponseStreamEvent)


def events(raw: bytes) -> list[dict]:
    parsed = [json.loads(line[len("data: "):]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    for e in parsed:
        EVENT.validate_python(e)
    return parsed


def test_a_batch_that_queued_up_goes_out_as_one_delta():
    r = reply([])
    raw = b"".join(r.open()) + b"".join(r.delta([FIRST, RequestOutput("r", content="a"), RequestOutput("r", content="b"),
                                                   RequestOutput("r", content="c")]))
    deltas = [e for e in events(raw) if e["type"] == "response.output_text.delta"]
    assert [d["delta"] for d in deltas] == ["abc"]


def test_reasoning_text_and_a_call_are_three_items_and_the_turn_is_stored_as_chat():
    stored: list = []
    r = reply(stored)
    outs = [
        FIRST,
        RequestOutput("r", reasoning="think"),
        RequestOutput("r", content="Let me check."),
        RequestOutput("r", tool_calls=[ToolCallDelta(0, id="call_1", name="f", arguments='{"a": 1}')], finish_reason="tool_calls",
                      usage=Usage(prompt_tokens=5, completion_tokens=7)),
    ]
    all_events = events(b"".join(r.open()) + b"".join(r.delta(outs)) + b"".join(r.close(outs[-1])))
    assert [e["sequence_number"] for e in all_events] == list(range(len(all_events)))
    final = all_events[-1]["response"]
    Response.model_validate(final)
    assert all_events[-1]["type"] == "response.completed" and final["status"] == "completed"
    assert [o["type"] for o in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["output"][2]["arguments"] == '{"a": 1}' and final["output"][2]["call_id"] == "call_1"
    (response, context), = stored
    assert response == final and context == [{"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}]


def test_a_failure_mid_stream_is_an_error_then_response_failed():
    r = reply([])
    raw = b"".join(r.open()) + b"".join(r.delta([FIRST, RequestOutput("r", content="par")]))
    raw += b"".join(r.fail(APIError(503, "worker went away", code="worker_unavailable")))
    tail = events(raw)[-2:]
    assert [e["type"] for e in tail] == ["error", "response.failed"]
    assert tail[0]["code"] == "worker_unavailable" and tail[0]["message"] == "worker went away"
    failed = Response.model_validate(tail[1]["response"])
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert [o.type for o in failed.output] == ["message"]  # what streamed before the failure
