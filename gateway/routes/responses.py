"""`/v1/responses` (OpenAI Responses): create, retrieve, delete, input items.

A translation (gateway/responses_schema.py) onto the chat path. A stored
response (gateway/response_store.py) keeps its turn's context and its
chain's conversation id: a follow-up with ``previous_response_id`` sends
that context plus its new input on the same conversation, so the worker's
conversation KV cache prefills only the new tokens (reported as
``usage.input_tokens_details.cached_tokens``).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..dispatch import Generation, generate, new_request_id, refuse_if_draining
from ..errors import APIError
from ..response_store import ResponseStore, StoredResponse
from ..responses_format import ResponsesReply
from ..responses_schema import input_messages, parse_response_request, stored_input_items, to_chat
from ..schemas import chat_request
from .chat import chat_wire

router = APIRouter(prefix="/v1/responses")
# Chat fields a worker's error may name, as a Responses client knows them.
PARAMS = {"max_tokens": "max_output_tokens", "messages": "input", "response_format": "text.format"}


def _store(request: Request) -> ResponseStore:
    return request.app.state.responses


def _not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"no stored response with id {response_id!r} (never stored, deleted, or expired)",
                    param=param, code="response_not_found")


@router.post("")
async def create_response(request: Request) -> Response:
    refuse_if_draining(request)
    body = parse_response_request(await request.body())
    store = _store(request)
    if "store" in body.model_fields_set and body.store and not store.enabled:
        raise APIError(400, "store: this server keeps no responses (--responses-max-stored 0)", param="store", code="unsupported_value")
    previous = None
    if body.previous_response_id is not None:
        previous = store.get(body.previous_response_id)
        if previous is None:
            raise _not_found(body.previous_response_id, "previous_response_id")
    response_id = f"resp_{uuid.uuid4().hex}"
    storing = body.store is not False and store.enabled
    history = previous.context if previous else []
    new, names = input_messages(body)
    # A chain runs on one conversation (its first stored response's id);
    # an unstored response takes the usual conversation rule (header, client).
    conversation = previous.conversation_id if previous else (response_id if storing else None)
    offset = (1 if body.instructions else 0) + len(history)
    wire = await chat_wire(
        request,
        chat_request(to_chat(body, history, new, conversation)),
        new_request_id(request, "resp_", default=response_id),
        names={(i + offset, j): name for (i, j), name in names.items()},
    )

    def keep(response: dict[str, Any], output: list[dict[str, Any]]) -> None:
        if storing:
            store.put(response_id, StoredResponse(response, history + new + output, stored_input_items(body, response_id), wire.conversation_id))

    job = Generation(wire, body.model, affinity=wire.conversation_id, stream=bool(body.stream), params=PARAMS)
    return await generate(request, job, lambda admitted: ResponsesReply(admitted, body, response_id, keep))


@router.get("/{response_id}")
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    if request.query_params.get("stream") in ("true", "1"):
        raise APIError(400, "stream: replaying a stored response as events is not supported", param="stream", code="unsupported_value")
    entry = _store(request).get(response_id)
    if entry is None:
        raise _not_found(response_id)
    return entry.response


@router.delete("/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    if not _store(request).delete(response_id):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request) -> dict[str, Any]:
    entry = _store(request).get(response_id)
    if entry is None:
        raise _not_found(response_id)
    q = request.query_params
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise APIError(400, "order: must be 'asc' or 'desc'", param="order", code="invalid_value")
    raw_limit = q.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise APIError(400, "limit: must be an integer from 1 to 100", param="limit", code="invalid_value")
    items = entry.input_items if order == "asc" else entry.input_items[::-1]
    after = q.get("after")
    if after is not None:
        ids = [i["id"] for i in items]
        if after not in ids:
            raise APIError(400, f"after: no input item {after!r} in this response", param="after", code="invalid_value")
        items = items[ids.index(after) + 1:]
    page = items[: int(raw_limit)]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > len(page),
    }
