"""Structured logs: JSON lines, one per request, no prompt text unless the
trace file is asked for, and the request id in the worker's lines too."""

from __future__ import annotations

import json
import time

import httpx

MARKER = "ZEBRA-PROMPT-MARKER-4471"


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.strip():
            out.append(json.loads(line))  # every line, not just ours
    return out


def wait_for(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_json_logs_carry_one_line_per_request_and_no_prompt_text(make_stack, tiny_model_path, tmp_path):
    trace = tmp_path / "trace.jsonl"
    stack = make_stack(
        tiny_model_path,
        worker_args=["--log-format", "json"],
        gateway_args=["--log-format", "json", "--trace-requests-path", str(trace)],
    )
    body = {"messages": [{"role": "user", "content": f"Repeat {MARKER}"}], "max_tokens": 5, "conversation": "log-conv"}
    r = httpx.post(f"{stack.base_url}/chat/completions", json=body, headers={"X-Request-Id": "ops-log-1"}, timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == "ops-log-1"
    usage = r.json()["usage"]
    answer = r.json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json={**body, "stream": True},
                      headers={"X-Request-Id": "ops-log-2"}, timeout=60) as s:
        assert s.status_code == 200
        list(s.iter_lines())
    r = httpx.post(f"{stack.base_url}/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400

    def request_lines() -> list[dict]:
        return [e for e in json_lines(stack.gateway.log()) if e.get("event") == "request"]

    lines = wait_for(lambda: (ls := request_lines()) and len(ls) >= 2 and ls, "two request lines")
    first = next(e for e in lines if e["request_id"] == "ops-log-1")
    assert first["conversation_id"] == "log-conv"
    assert first["worker"] == "worker"
    assert first["model"] and first["status"] == 200 and first["finish_reason"] == "length"
    assert first["prompt_tokens"] == usage["prompt_tokens"]
    assert first["completion_tokens"] == usage["completion_tokens"] == 5
    assert first["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert first["ttft_s"] > 0 and first["total_s"] >= first["ttft_s"]
    assert {"ts", "level", "logger", "msg"} <= set(first)
    assert any(e["request_id"] == "ops-log-2" for e in lines)
    # The malformed request never reached a worker: logged at the edge, with its error code.
    wait_for(  # the edge line may reach the log a moment after the response
        lambda: any(
            e.get("event") == "http" and e["status"] == 400 and e["error_code"] == "invalid_json"
            for e in json_lines(stack.gateway.log())
        ),
        "the edge log line of the malformed request",
    )

    # The worker logs the same ids (JSON lines as well).
    worker_lines = wait_for(
        lambda: [e for e in json_lines(stack.workers[0].log()) if e.get("request_id") in ("ops-log-1", "ops-log-2")],
        "the worker's request lines",
    )
    assert {e["request_id"] for e in worker_lines} == {"ops-log-1", "ops-log-2"}

    # No prompt text in either log; the opt-in trace has it, and the answer.
    assert MARKER not in stack.gateway.log()
    assert MARKER not in stack.workers[0].log()
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    req = next(e for e in events if e["event"] == "request" and e["request_id"] == "ops-log-1")
    assert MARKER in json.dumps(req["messages"])
    resp = next(e for e in events if e["event"] == "response" and e["request_id"] == "ops-log-1")
    assert resp["content"] == answer and resp["completion_tokens"] == 5
    streamed = next(e for e in events if e["event"] == "response" and e["request_id"] == "ops-log-2")
    assert streamed["content"] is not None
    assert (trace.stat().st_mode & 0o777) == 0o600
