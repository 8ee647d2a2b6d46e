"""`tokenize` and `detokenize` control calls (vLLM's /tokenize, /detokenize),
answered with the worker's own tokenizer and chat template, so a client can
budget its context and name token ids for logit_bias."""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.chat import chat_messages
from protocol.messages import ChatRequest, ResponseFormat, SamplingParams, ToolChoice

from .prompt import PromptError, render_prompt


def tokenize(scheduler: Any, args: dict[str, Any]) -> dict[str, Any]:
    """``{"prompt": str}`` (plain text) or ``{"messages": [...]}`` (rendered
    as a chat request with the same ``tools``/``chat_template_kwargs``
    would be) -> ``{"tokens", "count", "max_model_len"}``. ValueError -> 400."""
    tok = scheduler.tokenizer
    if args.get("messages") is not None:
        try:
            messages = chat_messages(args["messages"])
        except msgspec.ValidationError as exc:  # the gateway validated them; a 400 all the same
            raise ValueError(f"messages: {exc}") from None
        req = ChatRequest(
            request_id="tokenize", messages=messages, sampling=SamplingParams(), tools=args.get("tools"),
            tool_choice=ToolChoice("auto" if args.get("tools") else "none"), response_format=ResponseFormat(),
            chat_template_kwargs=args.get("chat_template_kwargs"),
        )
        try:
            prompt = render_prompt(tok, req.messages, model_id=scheduler.model_id, tools=scheduler.tool_plan(req),
                                   variables=scheduler.template_variables(req))
        except PromptError as exc:
            raise ValueError(str(exc)) from None
        tokens = list(prompt.token_ids)
    else:
        text = args.get("prompt")
        if not isinstance(text, str):
            raise ValueError("prompt must be a string")
        tokens = list(tok.encode(text, add_special_tokens=bool(args.get("add_special_tokens", True))))
    return {"tokens": tokens, "count": len(tokens), "max_model_len": scheduler.context_length}


def detokenize(scheduler: Any, args: dict[str, Any]) -> dict[str, Any]:
    tokens = args.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise ValueError("tokens must be a list of token ids")
    bad = next((t for t in tokens if not 0 <= t < scheduler.vocab_size), None)
    if bad is not None:
        raise ValueError(f"token id {bad} is outside this model's vocabulary ({scheduler.vocab_size} tokens)")
    return {"prompt": scheduler.tokenizer.decode(tokens)}
