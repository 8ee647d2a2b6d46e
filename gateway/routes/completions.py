"""`POST /v1/completions` (legacy): a raw prompt, no chat template.

The prompt travels as ``ChatRequest.prompt`` (text or token ids; the worker
tokenizes text as the model's tokenizer does and lays out ``suffix`` with
the model's FIM tokens); everything else is the shared generation path.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from protocol.messages import ChatRequest

from ..completions_format import CompletionReply
from ..completions_schema import parse_completion_request
from ..config import GatewayConfig
from ..conversation import resolve_conversation_id
from ..dispatch import Generation, generate, new_request_id, refuse_if_draining, request_deadline
from .tokenize import call_any_worker

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    refuse_if_draining(request)
    config: GatewayConfig = request.app.state.config
    body = parse_completion_request(await request.body())
    wire = ChatRequest(
        request_id=new_request_id(request, "cmpl-"),
        messages=[],
        prompt=body.wire_prompt(),
        suffix=body.suffix,
        sampling=body.sampling(),
        conversation_id=resolve_conversation_id(body, request, auto_id=config.conversation_auto_id),
        reset_conversation=bool(body.reset_conversation),
        deadline=request_deadline(request),
    )
    echo = ""
    if body.echo:  # token ids are echoed as the model's tokenizer reads them
        text = body.text_prompt
        echo = text if text is not None else (await call_any_worker(request, body.model, "detokenize", {"tokens": wire.prompt}, param="prompt"))["prompt"]
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    job = Generation(wire, body.model, affinity=wire.conversation_id, stream=bool(body.stream))
    return await generate(request, job, lambda admitted: CompletionReply(admitted, echo=echo, include_usage=include_usage, n=body.n or 1))
