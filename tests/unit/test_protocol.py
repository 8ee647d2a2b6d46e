"""The wire codec: round trips, tags, and refusal of garbage."""

from __future__ import annotations

import msgspec
import pytest

from protocol import codec
from protocol.chat import ChatMessage, ImagePart, MediaURL, TextPart
from protocol.messages import (
    Abort,
    CacheDecision,
    ChatRequest,
    ControlCall,
    ErrorInfo,
    GoingAway,
    Hello,
    RequestOutput,
    SamplingParams,
    StepOutputs,
    Usage,
    WorkerInfo,
    WorkerLoad,
)


def test_requests_round_trip():
    req = ChatRequest(
        request_id="r1",
        messages=[ChatMessage(role="user", content=[TextPart("hi ünïcode"), ImagePart(MediaURL("data:image/png;base64,AA"))])],
        sampling=SamplingParams(max_tokens=5, temperature=0.0, stop=["\n"], seed=3),
        conversation_id="c",
    )
    for msg in (req, Abort(request_ids=["a", "b"]), Hello(protocol_version=1, gateway_id="g"), ControlCall("1", "ping")):
        assert codec.decode_to_worker(codec.encode(msg)) == msg


def test_outputs_round_trip():
    out = StepOutputs(
        outputs=[
            RequestOutput("r1", content="Par", tokens=1, cache_decision=CacheDecision("hit", 10, 2), prompt_tokens=12),
            RequestOutput("r2", finish_reason="length", usage=Usage(3, 4, 0, 0.1, 0.2, 0.0)),
            RequestOutput("r3", finish_reason="error", error=ErrorInfo("bad", status=400)),
        ],
        load=WorkerLoad(running=2, steps=9),
    )
    info = WorkerInfo(1, "w", "m", 123, 2048, ["chat"])
    for msg in (out, info, GoingAway("w", "bye")):
        assert codec.decode_from_worker(codec.encode(msg)) == msg


def test_direction_is_enforced():
    with pytest.raises(codec.DecodeError):
        codec.decode_to_worker(codec.encode(GoingAway("w", "bye")))
    with pytest.raises(codec.DecodeError):
        codec.decode_from_worker(codec.encode(Abort(request_ids=[])))


@pytest.mark.parametrize("junk", [b"", b"\xc1", b"\x92\x01\x02", msgspec.msgpack.encode({"type": "chat", "request_id": 5})])
def test_garbage_is_refused(junk):
    with pytest.raises(codec.DecodeError):
        codec.decode_to_worker(junk)


def test_unknown_control_method_is_refused():
    frame = msgspec.msgpack.encode({"type": "control", "call_id": "1", "method": "exec", "args": {}})
    with pytest.raises(codec.DecodeError):
        codec.decode_to_worker(frame)
