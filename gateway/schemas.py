"""Validation of `/v1/chat/completions` bodies.

Strict types (a string is not a number), clear messages, and the name of the
offending field in ``param``. Unknown fields are ignored, as OpenAI clients
send many we don't use.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.messages import SamplingParams

from . import compat
from .agent_fields import (
    MAX_TOOLS,
    TOP_LOGPROBS_MAX,
    FunctionTool,
    ResponseFormatField,
    ToolChoiceField,
    check_logit_bias,
    check_template_kwargs,
    refused_field,
    wire_response_format,
    wire_tool_choice,
)
from .body import json_object, validate
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


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: str
    arguments: str | dict[str, Any]  # OpenAI sends a JSON string; some clients an object


class ToolCallItem(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _needs_content(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self


class StreamOptions(_Strict):
    include_usage: bool | None = None


class SamplingFields(_Strict):
    """The sampling fields chat and legacy completions share."""

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool | None = None  # like vLLM's: for benchmarks

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"stop sequences are limited to {MAX_STOP_LENGTH} characters")
        return [s for s in stops if s]

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        check_logit_bias(v)
        return v

    def sampling_params(self, *, max_tokens: int | None, logprobs: bool = False, top_logprobs: int = 0, n: int = 1) -> SamplingParams:
        """Unset fields stay None: the worker defaults them from the model's
        generation_config.json, then its flags (worker/generation_config.py)."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=check_logit_bias(self.logit_bias),
            seed=self.seed,
            stop=list(self.stop or []),
            ignore_eos=bool(self.ignore_eos),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            n=n,
        )


class ChatCompletionRequest(SamplingFields):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=128)  # the worker refuses more than it runs at once
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=TOP_LOGPROBS_MAX)
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoiceField | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatField | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    # kmlx extensions; ``images`` is for kamiwaza-mlx compatibility (compat.py)
    strip_thinking: bool | None = None
    conversation: str | None = None
    conversation_id: str | None = None
    reset_conversation: bool | None = None
    images: list[str] | None = None

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_template_kwargs(v)

    def completion_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def sampling(self) -> SamplingParams:
        return self.sampling_params(
            max_tokens=self.completion_budget(), logprobs=bool(self.logprobs), top_logprobs=self.top_logprobs or 0, n=self.n or 1,
        )

    def agent_fields(self) -> dict[str, Any]:
        """The ChatRequest fields for tools, formats and the template."""
        tools = [t.wire() for t in self.tools] if self.tools else None
        return {
            "tools": tools,
            "tool_choice": wire_tool_choice(self.tool_choice, self.tools),
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "response_format": wire_response_format(self.response_format),
            "chat_template_kwargs": self.chat_template_kwargs,
            "reasoning_effort": self.reasoning_effort,
        }

    def check_together(self) -> None:
        """Rules across fields, each a 400 naming the field at fault."""
        try:
            wire_tool_choice(self.tool_choice, self.tools)
        except ValueError as exc:
            raise APIError(400, f"tool_choice: {exc}", param="tool_choice", code="invalid_value") from None
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs: needs logprobs set to true", param="top_logprobs", code="invalid_value")

    def wire_messages(self) -> list[dict[str, Any]]:
        """Messages for the worker, with the top-level ``images``
        (kamiwaza-mlx compatibility) attached to the last user message."""
        return compat.attach_images([m.model_dump(exclude_none=True) for m in self.messages], self.images)


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    """Bytes -> validated request, or an APIError(400) naming the problem."""
    data = json_object(raw)
    refused = refused_field(data)
    if refused is not None:
        raise APIError(400, f"{refused[0]}: {refused[1]}", param=refused[0], code="unsupported_parameter")
    return chat_request(data)


def chat_request(data: dict[str, Any]) -> ChatCompletionRequest:
    """A chat body (parsed, or translated from another API's request) ->
    validated request, or an APIError(400) naming the problem."""
    body = validate(ChatCompletionRequest, data, tags=UNION_TAGS)
    body.check_together()
    return body


# Discriminator values pydantic puts in an error's location after the union.
UNION_TAGS = frozenset({"text", "image_url", "video_url", "json_object", "json_schema"})
