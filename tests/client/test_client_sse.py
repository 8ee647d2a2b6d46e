from client.sse import iter_events, iter_sse_data, parse_event


def test_data_lines_join_and_comments_are_skipped() -> None:
    lines = [": keep-alive", "", "data: a", "data: b", "", "event: x", "data:c", ""]
    assert list(iter_sse_data(lines)) == ["a\nb", "c"]


def test_last_event_without_blank_line_is_delivered() -> None:
    assert list(iter_sse_data(["data: tail"])) == ["tail"]


def test_crlf_line_endings() -> None:
    assert list(iter_sse_data(["data: x\r\n", "\r\n"])) == ["x"]


def test_content_reasoning_finish_and_usage() -> None:
    ev = parse_event('{"choices":[{"index":0,"delta":{"content":"hi","reasoning_content":"hm"},"finish_reason":null}]}')
    assert (ev.content, ev.reasoning, ev.finish_reason) == ("hi", "hm", None)
    ev = parse_event('{"choices":[],"usage":{"prompt_tokens":3}}')
    assert ev.usage == {"prompt_tokens": 3} and ev.content == ""
    ev = parse_event('{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}')
    assert ev.finish_reason == "length"


def test_other_reasoning_field_name_and_null_content() -> None:
    ev = parse_event('{"choices":[{"index":0,"delta":{"content":null,"reasoning":"r"}}]}')
    assert ev.content == "" and ev.reasoning == "r"


def test_error_event_and_garbage() -> None:
    ev = parse_event('{"error":{"message":"boom","type":"server_error"}}')
    assert ev.error == {"message": "boom", "type": "server_error"}
    assert parse_event("not json").error is not None
    assert parse_event("[1,2]").error is not None


def test_done_stops_iteration() -> None:
    lines = ['data: {"choices":[{"index":0,"delta":{"content":"a"}}]}', "", "data: [DONE]", "", "data: late", ""]
    events = list(iter_events(lines))
    assert [e.content for e in events] == ["a", ""]
    assert events[-1].done
