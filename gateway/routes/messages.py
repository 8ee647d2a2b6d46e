"""`POST /v1/messages` and `/v1/messages/count_tokens` (Anthropic).

A translation (gateway/anthropic_schema.py) onto the chat path and its
worker protocol, and Anthropic's shapes on the way back
(gateway/anthropic_format.py). Errors under this prefix have Anthropic's
shape (gateway/errors.py); ``x-api-key`` is accepted where ``--api-key``
is set (gateway/security.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from protocol.messages import ChatRequest

from ..anthropic_format import CountTokensReply, MessagesReply
from ..anthropic_schema import (
    CountTokensRequest,
    MessagesRequest,
    parse_count_tokens_request,
    parse_messages_request,
    to_chat,
)
from ..dispatch import Generation, generate, new_request_id, refuse_if_draining
from ..schemas import chat_request
from .chat import chat_wire

router = APIRouter()
# Chat fields a worker's error may name, as an Anthropic client knows them.
PARAMS = {"stop": "stop_sequences", "response_format": "output_config.format"}


async def _wire(request: Request, body: MessagesRequest | CountTokensRequest) -> ChatRequest:
    chat, names = to_chat(body)
    return await chat_wire(request, chat_request(chat), new_request_id(request, "msg_"), names=names)


@router.post("/v1/messages")
async def create_message(request: Request) -> Response:
    refuse_if_draining(request)
    body = parse_messages_request(await request.body())
    wire = await _wire(request, body)
    job = Generation(wire, body.model, affinity=wire.conversation_id, stream=bool(body.stream), params=PARAMS)
    return await generate(request, job, MessagesReply)


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    """What ``usage.input_tokens`` (+ ``cache_read_input_tokens``) of the
    same request would be: the worker renders it as for generation and
    reports the size without computing anything (``max_tokens`` 0)."""
    refuse_if_draining(request)
    body = parse_count_tokens_request(await request.body())
    wire = await _wire(request, body)
    wire.sampling.max_tokens = 0
    wire.conversation_id = None  # counting neither uses nor holds a conversation's cache
    return await generate(request, Generation(wire, body.model, affinity=None, params=PARAMS), CountTokensReply)
