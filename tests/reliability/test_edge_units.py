"""The gateway's edge, in-process: request bodies that used to reach deep
code as RecursionError or UnicodeEncodeError, and media the checks choked on."""

from __future__ import annotations

import json

import pytest

from gateway.body import MAX_JSON_DEPTH, json_object
from gateway.errors import APIError
from gateway.media import MediaConfig, _check_video


def nested(depth: int) -> bytes:
    """A body whose deepest value sits ``depth`` containers down (the body itself is one)."""
    return ('{"messages": [], "x": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}").encode()


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_too_deep_is_a_400(depth):
    with pytest.raises(APIError) as err:
        json_object(nested(depth))
    assert err.value.status == 400 and err.value.code == "json_too_deep"


def test_deep_enough_is_accepted():
    assert json_object(nested(MAX_JSON_DEPTH))["messages"] == []
    deep_object = '{"a":' * (MAX_JSON_DEPTH - 1) + "1" + "}" * (MAX_JSON_DEPTH - 1)
    assert json_object(deep_object.encode())["a"]


@pytest.mark.parametrize("body", [
    b'{"title": "\\ud800"}',
    b'{"messages": [{"role": "user", "content": "ok \\udfff"}]}',
    b'{"tools": [{"\\ud83d": 1}]}',  # a key
])
def test_lone_surrogates_are_a_400(body):
    with pytest.raises(APIError) as err:
        json_object(body)
    assert err.value.status == 400 and err.value.code == "invalid_value"


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**40])
def test_integers_past_64_bits_are_a_400(number):
    with pytest.raises(APIError) as err:
        json_object(json.dumps({"tokens": [1, number]}).encode())
    assert err.value.status == 400 and err.value.code == "invalid_value"
    assert json_object(json.dumps({"n": 2**64 - 1, "m": -(2**63)}).encode())["n"] == 2**64 - 1


def test_real_astral_characters_pass():
    assert json_object(json.dumps({"t": "😀 \ud83d\ude00"}).encode())["t"] == "😀 😀"


def test_an_svg_sent_as_video_is_a_400():
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    with pytest.raises(APIError) as err:
        _check_video(svg, "messages[0].content[0]", MediaConfig())
    assert err.value.status == 400 and err.value.code == "invalid_video"
    assert err.value.param == "messages[0].content[0]"
