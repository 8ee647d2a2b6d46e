"""Schemathesis against the official OpenAI OpenAPI spec: generated requests
for every OpenAI operation kmlx serves (chat, responses, legacy completions,
models; docs/apis.md) must never produce a server error or a response that
violates the spec's schema."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

# Every test here runs against a started stack; a fast run does not even import this module
# (tests/support/e2e.py: building the schemathesis tests takes ~20 s).
pytestmark = pytest.mark.e2e

# The official spec, vendored (MIT; source and commit in openai-openapi.SOURCE,
# see README.md here); KMLX_OPENAPI_SPEC points at another copy.
SPEC = Path(os.environ.get("KMLX_OPENAPI_SPEC", Path(__file__).with_name("openai-openapi.yaml")))
EXAMPLES = int(os.environ.get("KMLX_CONFORMANCE_EXAMPLES", "60"))


def _stream_events_as_items(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec (OpenAPI 3.1) documents a stream's *chunk* as the schema of
    ``text/event-stream``; schemathesis >= 4.32 reads a 3.1 event-stream
    schema as the schema of the SSE event object itself ({data, event, ...})
    and fails every stream. Say what the spec means in OpenAPI 3.2's terms:
    each event's ``data`` is a JSON chunk (or an error body), or ``[DONE]``."""
    for path in spec["paths"].values():
        for operation in path.values():
            for response in (operation.get("responses") or {}).values() if isinstance(operation, dict) else ():
                media = (response.get("content") or {}).get("text/event-stream")
                if not media or "schema" not in media:
                    continue
                payload = {"anyOf": [media.pop("schema"), {"$ref": "#/components/schemas/ErrorResponse"}]}
                media["itemSchema"] = {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "anyOf": [
                                {"const": "[DONE]"},
                                {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
                            ]
                        }
                    },
                }
    return spec


def _error_bodies_wrapped(spec: dict[str, Any]) -> dict[str, Any]:
    """One slip mended: deleteResponse's 404 names the bare ``Error``
    object, where every OpenAI error body (this one included) is
    ``{"error": Error}``, the ``ErrorResponse`` other operations name."""
    media = spec["paths"]["/responses/{response_id}"]["delete"]["responses"]["404"]["content"]["application/json"]
    assert media["schema"] == {"$ref": "#/components/schemas/Error"}, "the spec changed: drop this mend"
    media["schema"] = {"$ref": "#/components/schemas/ErrorResponse"}
    return spec


@functools.cache
def _spec_json() -> str:
    """The spec parsed once per run (this module and tests/reliability's fuzz
    tests both build schemas from it at collection, in every run, fast ones
    included): libyaml's parser when present, five times faster than
    PyYAML's own on these 87,000 lines. As JSON: YAML dates in descriptions
    become strings, and each caller gets its own copy to mend."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return json.dumps(yaml.load(SPEC.read_text(), Loader=loader), default=str)


def _load_spec() -> dict[str, Any]:
    return _error_bodies_wrapped(_stream_events_as_items(json.loads(_spec_json())))


OPERATIONS = [
    "createChatCompletion", "listModels", "retrieveModel", "createCompletion",
    "createResponse", "getResponse", "deleteResponse", "listInputItems",
]
schema = schemathesis.openapi.from_dict(_load_spec()).include(operation_id=OPERATIONS)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_openai_conformance(case, capped_stack):
    response = case.call(base_url=capped_stack.base_url, timeout=60)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
