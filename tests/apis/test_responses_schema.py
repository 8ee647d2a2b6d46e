"""The Responses request as the chat body it means (pure translation, no
processes), on the request shape Codex CLI sends: the whole history each
turn, unstored, with reasoning items and function calls."""

from __future__ import annotations

import json

import pytest

from gateway.errors import APIError
from gateway.responses_schema import input_messages, parse_response_request, to_chat

SHELL = {"type": "function", "name": "shell", "description": "Runs a command", "strict": False,
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                        "required": ["command"], "additionalProperties": False}}
CODEX = {
    "model": "gpt-5-codex", "instructions": "You are a coding agent.", "tools": [SHELL], "tool_choice": "auto",
    "parallel_tool_calls": False, "reasoning": {"effort": "medium", "summary": "auto"}, "store": False, "stream": True,
    "include": ["reasoning.encrypted_content"], "prompt_cache_key": "session-1", "text": {"verbosity": "medium"},
    "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": '{"command": ["ls"]}'},
        {"type": "function_call", "call_id": "call_2", "name": "shell", "arguments": '{"command": ["pwd"]}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "README.md"},
        {"type": "function_call_output", "call_id": "call_2", "output": "/repo"},
    ],
}


def test_a_codex_turn_is_one_chat_history_with_parallel_calls_in_one_assistant_turn():
    body = parse_response_request(json.dumps(CODEX).encode())
    new, _ = input_messages(body)
    chat = to_chat(body, [], new, None)
    assert chat["messages"] == [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": [{"type": "text", "text": "List the files."}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": '{"command": ["ls"]}'}},
            {"id": "call_2", "type": "function", "function": {"name": "shell", "arguments": '{"command": ["pwd"]}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "README.md"},
        {"role": "tool", "tool_call_id": "call_2", "content": "/repo"},
    ]
    assert chat["tools"] == [{"type": "function", "function": {k: v for k, v in SHELL.items() if k != "type"}}]
    assert (chat["tool_choice"], chat["parallel_tool_calls"], chat["reasoning_effort"], chat["stream"]) == ("auto", False, "medium", True)


@pytest.mark.parametrize("extra,param", [
    ({"text": {"verbosity": "low"}}, "text.verbosity"),  # only the default can be honoured
    ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0].type"),
    ({"max_tool_calls": 2}, "max_tool_calls"),
])
def test_what_a_local_model_cannot_honour_is_refused_by_name(extra, param):
    with pytest.raises(APIError) as err:
        parse_response_request(json.dumps({**CODEX, **extra}).encode())
    assert err.value.status == 400 and err.value.param == param
