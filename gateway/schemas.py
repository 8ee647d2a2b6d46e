"""Validation of `/v1/chat/completions` bodies.

Strict types (a string is not a number), clear messages, and the name of the
offending field in ``param``. Unknown fields are ignored, as OpenAI clients
send many we don't use.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from protocol.messages import SamplingParams

from .errors import APIError

MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 256


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: str | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoPart(_Strict):
    type: Literal["video_url"]
    video_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart, VideoPart], Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _needs_content(self) -> "Message":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self


class StreamOptions(_Strict):
    include_usage: bool | None = None


class ChatCompletionRequest(_Strict):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: Union[str, list[str], None] = None
    n: int | None = Field(default=None, ge=1, le=1)
    logprobs: bool | None = None
    tools: list[dict[str, Any]] | None = None
    # kmlx / seed extensions
    strip_thinking: bool | None = None
    conversation: str | None = None
    conversation_id: str | None = None
    reset_conversation: bool | None = None
    images: list[str] | None = None
    ignore_eos: bool | None = None  # like vLLM's: for benchmarks

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Union[str, list[str], None]) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"stop sequences are limited to {MAX_STOP_LENGTH} characters")
        return [s for s in stops if s]

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("logprobs are not supported by this server yet")
        return v

    def completion_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.completion_budget(),
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            seed=self.seed,
            stop=list(self.stop or []),  # type: ignore[arg-type]
            ignore_eos=bool(self.ignore_eos),
        )

    def wire_messages(self) -> list[dict[str, Any]]:
        """Messages for the worker, with the seed's top-level ``images``
        attached to the last user message as image parts."""
        msgs = [m.model_dump(exclude_none=True) for m in self.messages]
        if self.images:
            last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=None)
            if last_user is None:
                raise APIError(400, "`images` needs a user message to attach to", param="images")
            content = msgs[last_user]["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            parts += [{"type": "image_url", "image_url": {"url": u}} for u in self.images]
            msgs[last_user]["content"] = parts
        return msgs


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    """Bytes -> validated request, or an APIError(400) naming the problem."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        # For unions pydantic reports every branch; the deepest location is
        # the one that names what is actually wrong.
        err = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
        loc = [str(p) for p in err.get("loc", ())]
        param = _param_path(loc)
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        raise APIError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value") from None


def _param_path(loc: list[str]) -> str | None:
    """pydantic's location -> ``messages[0].content`` style."""
    out = ""
    for p in loc:
        if p.isdigit():
            out += f"[{p}]"
        elif p in ("str", "list", "function-after", "none") or "[" in p:
            continue  # union branch names, not fields
        else:
            out += ("." if out else "") + p
    return out or None
