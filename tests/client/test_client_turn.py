"""One turn against the fake gateway: request shape, history, errors, abort."""

from __future__ import annotations

import pytest

from client.api import Gateway, root_url
from client.conversation import Conversation
from client.errors import ApiError, GatewayUnreachable
from client.metrics import format_stats
from client.turn import ChatSettings, run_turn
from tests.client.client_fake_gateway import FakeGateway


class Sink:
    def __init__(self, stop_after: int | None = None) -> None:
        self.text = ""
        self.thought = ""
        self.chunks = 0
        self.stop_after = stop_after

    def reasoning(self, text: str) -> None:
        self.thought += text

    def content(self, text: str) -> None:
        self.text += text
        self.chunks += 1
        if self.stop_after is not None and self.chunks >= self.stop_after:
            raise KeyboardInterrupt  # what Ctrl-C does mid-stream


@pytest.fixture
def gw(fake_gateway: FakeGateway):
    with Gateway(fake_gateway.base_url, api_key="sk-test") as g:
        yield g


def test_streamed_turn_is_sent_right_and_kept(gw: Gateway, fake_gateway: FakeGateway) -> None:
    conv = Conversation(system="Be brief.")
    sink = Sink()
    settings = ChatSettings(model="fake-model", max_tokens=7, temperature=0.2)
    res = run_turn(gw, conv, "hi there", settings, sink)
    assert sink.text == res.text == "Hello from fake. You said: hi there"
    body = fake_gateway.chat_requests[0]
    assert body["conversation"] == conv.id
    assert body["max_tokens"] == 7 and body["temperature"] == 0.2 and body["model"] == "fake-model"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]
    assert fake_gateway.requests[-1]["headers"]["Authorization"] == "Bearer sk-test"
    # the streamed answer is part of the history (kamiwaza-mlx's client dropped it)
    assert conv.messages[-1] == {"role": "assistant", "content": res.text}
    assert res.conv.kv == "fresh" and res.conv.conv_id == conv.id
    assert res.usage["completion_tokens"] > 0 and res.ttft is not None

    res2 = run_turn(gw, conv, "again", settings, Sink())
    assert res2.conv.kv == "hit"
    assert [m["role"] for m in fake_gateway.chat_requests[1]["messages"]] == ["system", "user", "assistant", "user"]
    stats = format_stats(res2)
    assert "kv hit" in stats and "decode 42.5 tok/s" in stats and "cached" in stats and "ttft" in stats


def test_reset_gives_a_new_id_and_fresh_cache(gw: Gateway, fake_gateway: FakeGateway) -> None:
    conv = Conversation()
    run_turn(gw, conv, "one", ChatSettings(), Sink())
    old = conv.id
    conv.reset()
    assert conv.id != old and conv.messages == []
    res = run_turn(gw, conv, "two", ChatSettings(), Sink())
    assert res.conv.kv == "fresh"


def test_non_stream_sends_once(gw: Gateway, fake_gateway: FakeGateway) -> None:
    conv = Conversation()
    sink = Sink()
    res = run_turn(gw, conv, "THINK hard", ChatSettings(stream=False), sink)
    assert len(fake_gateway.chat_requests) == 1  # kamiwaza-mlx's client sent every request twice
    assert "stream_options" not in fake_gateway.chat_requests[0]
    assert sink.text == "The answer is 42." and sink.thought == "Let me think about it."
    assert conv.messages[-1]["content"] == "The answer is 42."  # reasoning is not history
    assert "ttft" not in format_stats(res)


def test_streamed_reasoning_is_separate(gw: Gateway) -> None:
    conv = Conversation()
    sink = Sink()
    run_turn(gw, conv, "THINK", ChatSettings(), sink)
    assert sink.thought == "Let me think about it." and sink.text == "The answer is 42."
    assert conv.messages[-1]["content"] == "The answer is 42."


def test_http_error_is_friendly_and_not_kept(gw: Gateway) -> None:
    conv = Conversation()
    with pytest.raises(ApiError) as info:
        run_turn(gw, conv, "ERROR", ChatSettings(), Sink())
    assert info.value.status == 400
    assert str(info.value) == "Gateway error [HTTP 400 invalid_request_error]: max_tokens must be positive (param: max_tokens)"
    assert conv.messages == []


def test_error_in_the_stream(gw: Gateway) -> None:
    conv = Conversation()
    sink = Sink()
    with pytest.raises(ApiError, match="worker crashed"):
        run_turn(gw, conv, "MIDERROR please", ChatSettings(), sink)
    assert sink.text  # what arrived before was shown
    assert conv.messages == []


def test_interrupt_closes_the_stream_and_keeps_history_clean(gw: Gateway, fake_gateway: FakeGateway) -> None:
    conv = Conversation()
    run_turn(gw, conv, "first", ChatSettings(), Sink())
    before = list(conv.messages)
    res = run_turn(gw, conv, "SLOW story", ChatSettings(), Sink(stop_after=3))
    assert res.interrupted and res.text.startswith("word0 word1")
    assert conv.messages == before
    # the server noticed the hang-up (this is what aborts the generation)
    assert fake_gateway.wait_for(lambda: fake_gateway.aborted == 1)


def test_unreachable_names_the_url_and_what_to_start() -> None:
    with Gateway("http://127.0.0.1:9/v1") as g:
        with pytest.raises(GatewayUnreachable) as info:
            run_turn(g, Conversation(), "hi", ChatSettings(), Sink())
        msg = str(info.value)
        assert "http://127.0.0.1:9/v1" in msg and "kmlx-gateway" in msg and "connection refused" in msg
        with pytest.raises(GatewayUnreachable):
            g.models()
        with pytest.raises(GatewayUnreachable):
            g.health()


def test_models_and_health(gw: Gateway, fake_gateway: FakeGateway) -> None:
    assert [m["id"] for m in gw.models()] == ["fake-model"]
    assert gw.health() == (200, {"status": "ok", "workers": 1})
    fake_gateway.ready = False
    assert gw.health()[0] == 503


def test_root_url() -> None:
    assert root_url("http://h:1/v1/") == "http://h:1"
    assert root_url("http://h:1/api") == "http://h:1/api"
