"""Schemathesis against the official OpenAI OpenAPI spec: generated requests
for createChatCompletion and listModels must never produce a server error or
a response that violates the spec's schema."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.support.e2e import starts_processes
from tests.support.processes import start_stack

REPO = Path(__file__).resolve().parents[2]
SPEC = Path(os.environ.get("KMLX_OPENAPI_SPEC", REPO.parent / "shared" / "reference" / "openai-openapi.yaml"))
EXAMPLES = int(os.environ.get("KMLX_CONFORMANCE_EXAMPLES", "60"))

if not SPEC.exists():
    pytest.skip(f"OpenAI spec not found at {SPEC} (set KMLX_OPENAPI_SPEC)", allow_module_level=True)

schema = schemathesis.openapi.from_path(SPEC).include(operation_id=["createChatCompletion", "listModels"])


@pytest.fixture(scope="module")
@starts_processes
def conformance_stack(tiny_model_path, log_dir):
    # Generated requests ask for huge completions; cap them so the run stays short.
    stack = start_stack(tiny_model_path, log_dir, worker_args=["--max-tokens-limit", "4"])
    yield stack
    stack.stop()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_openai_conformance(case, conformance_stack):
    response = case.call(base_url=conformance_stack.base_url, timeout=60)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
