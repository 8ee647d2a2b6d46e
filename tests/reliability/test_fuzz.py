"""Schemathesis over every operation kmlx serves, in positive and negative
mode: whatever is sent, the answer is never a server error, and every
refusal is an error body (OpenAI's shape; Anthropic's on /v1/messages).

The OpenAI operations are generated from OpenAI's own spec; the rest from
``kmlx_operations.yaml`` (health, stats, metrics, conversation caches,
tokenize, Anthropic Messages). ``KMLX_RELIABILITY_EXAMPLES`` sets the
examples per operation (default 20: the whole run takes about a minute here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

HERE = Path(__file__).parent

# Every test here fuzzes a running stack; a fast run does not even import this module
# (tests/support/e2e.py: building the schemathesis tests takes ~20 s).
pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("KMLX_RELIABILITY_EXAMPLES", "20"))
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
# Random generation only: the "coverage" phase enumerates boundary values of
# every property, ~9,000 requests for createResponse alone (an hour here).
PHASES = ["examples", "fuzzing"]


def configured(schema):
    schema.config.generation.update(modes=MODES)
    schema.config.phases.update(phases=PHASES)
    return schema


def _openai_schema():
    from tests.conformance.test_openai_spec import OPERATIONS, SPEC, _load_spec

    if not SPEC.exists():
        return None
    return configured(schemathesis.openapi.from_dict(_load_spec()).include(operation_id=OPERATIONS))


kmlx_schema = configured(schemathesis.openapi.from_path(HERE / "kmlx_operations.yaml"))
openai_schema = _openai_schema()


def error_shaped(response, path: str) -> None:
    """Every refusal is a JSON error body the client's SDK can read."""
    if response.status_code < 400 or response.request.method == "HEAD":
        return
    body = json.loads(response.content)
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["message"] and body["error"]["type"], body
    else:
        err = body["error"]
        assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str), body


@kmlx_schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_kmlx_operations_never_fail_on_input(case, capped_stack):
    response = case.call(base_url=capped_stack.root_url, timeout=60)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
    error_shaped(response, case.path)


if openai_schema is not None:

    @openai_schema.parametrize()
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def test_openai_operations_never_fail_on_input(case, capped_stack):
        response = case.call(base_url=capped_stack.base_url, timeout=60)
        case.validate_response(response, checks=[not_a_server_error])
        error_shaped(response, case.path)

else:

    def test_openai_operations_never_fail_on_input():
        pytest.skip("OpenAI spec not found (see tests/conformance/test_openai_spec.py)")
