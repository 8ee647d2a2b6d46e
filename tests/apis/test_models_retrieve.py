"""`GET /v1/models/{id}` through the OpenAI SDK against a real stack."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture(scope="module")
def client(tiny_stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_stack.base_url, api_key="unused", max_retries=0, timeout=60)


def test_retrieve_a_served_model_matches_the_list(client):
    listed = client.models.list().data[0]
    got = client.models.retrieve(listed.id)
    assert got.id == listed.id and got.object == "model" and got.created == listed.created and got.owned_by == "kmlx"


def test_retrieve_an_unknown_model_is_a_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such/model")
    body = err.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found" and body["param"] == "model" and "no-such/model" in body["message"]
