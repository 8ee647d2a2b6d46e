"""Legacy `/v1/completions` requests: a raw prompt instead of messages.

The sampling fields are chat's (``SamplingFields``); what differs is the
prompt (text or token ids, no chat template), ``suffix`` (fill in the
middle, on models with FIM tokens), ``echo`` and the legacy ``logprobs``.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from protocol.messages import SamplingParams

from .body import json_object, validate
from .errors import APIError
from .schemas import SamplingFields, StreamOptions

MAX_PROMPT_IDS = 1 << 20



class CompletionRequest(SamplingFields):
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)  # 0: nothing generated (with echo: the prompt back)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    echo: bool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)  # the legacy shape: this many alternatives per token
    n: int | None = Field(default=None, ge=1, le=128)  # the worker refuses more than it runs at once
    best_of: int | None = Field(default=None, ge=1)  # only equal to n: kmlx returns every choice it generates
    user: str | None = None  # an identifier; no effect on a local server
    # kmlx extensions, as on chat completions
    conversation: str | None = None
    conversation_id: str | None = None
    reset_conversation: bool | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, p: str | list[str] | list[int] | list[list[int]]) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(p, str):
            return p
        if p and isinstance(p[0], (str, list)) and len(p) != 1:
            raise ValueError("send one prompt per request (a list of several is not supported)")
        ids = p[0] if p and isinstance(p[0], list) else p
        if not ids:
            raise ValueError("the prompt is empty (no token ids)")
        if len(ids) > MAX_PROMPT_IDS:
            raise ValueError(f"at most {MAX_PROMPT_IDS} token ids")
        return p

    @property
    def text_prompt(self) -> str | None:
        p = self.prompt
        if isinstance(p, str):
            return p
        return p[0] if p and isinstance(p[0], str) else None

    @property
    def token_prompt(self) -> list[int] | None:
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], list):
            return p[0]
        if isinstance(p, list) and (not p or isinstance(p[0], int)):
            return p  # type: ignore[return-value]
        return None

    def wire_prompt(self) -> str | list[int]:
        text = self.text_prompt
        return text if text is not None else list(self.token_prompt or [])

    def sampling(self) -> SamplingParams:
        wanted = self.logprobs is not None
        return self.sampling_params(max_tokens=self.max_tokens, logprobs=wanted, top_logprobs=self.logprobs or 0, n=self.n or 1)


def parse_completion_request(raw: bytes) -> CompletionRequest:
    body = validate(CompletionRequest, json_object(raw))
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise APIError(400, "best_of: only equal to n (kmlx returns every choice it generates)", param="best_of", code="unsupported_value")
    if body.suffix is not None and body.echo:
        raise APIError(400, "echo: cannot be used together with suffix", param="echo", code="invalid_value")
    if body.echo and body.logprobs is not None:
        raise APIError(400, "logprobs: with echo this needs the prompt's logprobs, which kmlx does not compute",
                       param="logprobs", code="unsupported_value")
    return body
