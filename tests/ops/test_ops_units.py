"""Pure parts of the operations features: no processes, no model."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from gateway.access import valid_request_id
from gateway.cli import build_parser
from gateway.errors import APIError
from gateway.limits import check_request_limits, data_url_size
from gateway.logging_setup import LogFormatter
from gateway.metrics import Metrics
from gateway.ops_config import OpsConfig, ops_config_from_args
from gateway.schemas import parse_chat_request
from protocol.messages import Usage
from worker.log_format import LogFormatter as WorkerLogFormatter


def record(msg: str, fields: dict | None = None) -> logging.LogRecord:
    r = logging.LogRecord("kmlx.test", logging.INFO, __file__, 1, msg, (), None)
    if fields is not None:
        r.fields = fields
    return r


@pytest.mark.parametrize("formatter", [LogFormatter, WorkerLogFormatter])
def test_json_formatter_merges_fields_and_text_formatter_appends_them(formatter):
    line = formatter(json_lines=True).format(record("request x", {"request_id": "x", "status": 200}))
    obj = json.loads(line)
    assert obj["msg"] == "request x" and obj["request_id"] == "x" and obj["status"] == 200
    assert {"ts", "level", "logger"} <= set(obj)
    text = formatter(json_lines=False).format(record("request x", {"request_id": "x"}))
    assert text.endswith('request x {"request_id": "x"}')
    assert json.loads(formatter(json_lines=True).format(record("plain")))["msg"] == "plain"


def test_request_id_validation():
    assert valid_request_id("abc-123_X.y")
    assert not valid_request_id("")
    assert not valid_request_id("x" * 129)
    assert not valid_request_id("tab\there")
    assert not valid_request_id("ünicode")


def test_data_url_size_without_decoding():
    raw = b"\x00\x01\x02" * 100 + b"!"
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    assert data_url_size(url) == len(raw)
    assert data_url_size("data:text/plain,a%20b") == 3
    assert data_url_size("data:image/png;base64") is None


def _body(**extra) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **extra}).encode()


def test_limits_name_the_offending_field():
    ops = OpsConfig(max_messages=2, max_images=1, max_image_bytes=10)
    check_request_limits(parse_chat_request(_body()), ops)
    with pytest.raises(APIError) as e:
        check_request_limits(parse_chat_request(_body(images=["https://x/a.png", "https://x/b.png"])), ops)
    assert e.value.status == 400 and e.value.code == "too_many_images"
    with pytest.raises(APIError) as e:
        big = "data:image/png;base64," + base64.b64encode(b"0" * 11).decode()
        check_request_limits(parse_chat_request(_body(images=[big])), ops)
    assert e.value.status == 413 and e.value.param == "images[0]"
    with pytest.raises(APIError) as e:
        check_request_limits(parse_chat_request(_body(images=["file:///etc/passwd"])), ops)
    assert e.value.code == "invalid_image_url"
    unlimited = OpsConfig(max_messages=0, max_images=0, max_image_bytes=0)
    check_request_limits(parse_chat_request(_body(images=[big, big])), unlimited)


def test_api_key_from_flag_and_environment(monkeypatch):
    monkeypatch.setenv("KMLX_API_KEY", "from-env")
    ops = ops_config_from_args(build_parser().parse_args(["--api-key", "a", "--api-key", "b", "--max-body-mb", "1"]))
    assert ops.api_keys == ["a", "b", "from-env"]
    assert ops.max_body_bytes == 1024 * 1024
    monkeypatch.delenv("KMLX_API_KEY")
    assert ops_config_from_args(build_parser().parse_args([])).api_keys == []


def _value(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def test_metrics_classify_outcomes():
    m = Metrics()
    u = Usage(prompt_tokens=10, completion_tokens=4, cached_tokens=6, ttft_seconds=0.2, decode_seconds=0.3, queue_seconds=0.05)
    m.observe(model="m", finish_reason="stop", usage=u, total_seconds=0.6, error_code=None, refused=False)
    m.observe(model="m", finish_reason="abort", usage=u, total_seconds=0.6, error_code=None, refused=False)
    m.observe(model="m", finish_reason="error", usage=Usage(), total_seconds=0.1, error_code="worker_unavailable", refused=False)
    m.observe(model="m", finish_reason="error", usage=Usage(), total_seconds=0.1, error_code="queue_full", refused=True)
    m.reject("shutting_down")
    assert _value(m, "kmlx:request_success_total", model_name="m", finished_reason="stop") == 1
    assert _value(m, "kmlx:request_aborted_total", model_name="m") == 1
    assert _value(m, "kmlx:request_failed_total", model_name="m", code="worker_unavailable") == 1
    assert _value(m, "kmlx:admission_rejections_total", reason="queue_full") == 1
    assert _value(m, "kmlx:admission_rejections_total", reason="shutting_down") == 1
    assert _value(m, "kmlx:prompt_tokens_total", model_name="m") == 20  # aborted work still counts
    assert _value(m, "kmlx:prompt_tokens_cached_total", model_name="m") == 12
    assert _value(m, "kmlx:time_to_first_token_seconds_count", model_name="m") == 2
    assert _value(m, "kmlx:time_per_output_token_seconds_sum", model_name="m") == pytest.approx(0.2)
    assert _value(m, "kmlx:e2e_request_latency_seconds_count", model_name="m") == 1
