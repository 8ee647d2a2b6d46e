"""`POST /v1/chat/completions`: validate, translate to the wire, generate.

``chat_wire`` (limits, media, conversation id, deadline -> ``ChatRequest``)
is shared with the APIs that translate their requests into a chat request
(`/v1/messages`, `/v1/responses`); ``dispatch.generate`` runs it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from protocol.chat import ChatMessage, chat_messages
from protocol.messages import ChatRequest

from ..chat_format import ChatReply
from ..config import GatewayConfig
from ..conversation import resolve_conversation_id
from ..dispatch import Generation, generate, new_request_id, refuse_if_draining, request_deadline
from ..errors import APIError
from ..limits import check_request_limits
from ..media import wire_messages_with_media
from ..schemas import ChatCompletionRequest, parse_chat_request

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    refuse_if_draining(request)
    body = parse_chat_request(await request.body())
    wire = await chat_wire(request, body, new_request_id(request, "chatcmpl-"))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    params = {"max_tokens": "max_completion_tokens"} if body.max_completion_tokens is not None else {}
    job = Generation(wire, body.model, affinity=wire.conversation_id, stream=bool(body.stream), params=params)
    return await generate(request, job, lambda admitted: ChatReply(admitted, include_usage=include_usage, n=body.n or 1))


async def chat_wire(
    request: Request, body: ChatCompletionRequest, request_id: str, *, names: dict[tuple[int, int], str] | None = None,
) -> ChatRequest:
    """A validated chat request -> the worker's ``ChatRequest``: limits and
    media checked (4xx before any worker), conversation id resolved.
    ``names``: how the client's own API names message parts, for errors."""
    config: GatewayConfig = request.app.state.config
    check_request_limits(body, config.ops, allow_local_media=bool(config.media.allow_local_dirs), names=names)
    messages = await wire_messages_with_media(request.app.state.pool, body, config, names=names)
    return ChatRequest(
        request_id=request_id,
        messages=_typed(messages),
        sampling=body.sampling(),
        strip_thinking=config.strip_thinking if body.strip_thinking is None else body.strip_thinking,
        conversation_id=resolve_conversation_id(body, request, auto_id=config.conversation_auto_id),
        reset_conversation=bool(body.reset_conversation),
        deadline=request_deadline(request),
        **body.agent_fields(),
    )


def _typed(messages: list[dict[str, Any]]) -> list[ChatMessage]:
    try:
        return chat_messages(messages)
    except msgspec.ValidationError as exc:  # schemas.py admits only what fits; a 400 all the same
        raise APIError(400, f"messages: {exc}", param="messages", code="invalid_value") from None
