"""Anthropic Messages requests: validation, and translation to a chat request.

``/v1/messages`` is a translation: a validated Anthropic body becomes the
OpenAI chat body it means (system prompt first, blocks as parts, tool use
as tool calls, tool results as tool messages), which then takes the chat
path to the worker. Every field Anthropic documents is either honoured or
refused with a 400 naming it (docs/apis.md); unknown fields are ignored, as
for chat.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .body import parse_model
from .errors import APIError
from .schemas import MAX_STOP_LENGTH, MAX_STOP_SEQUENCES


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class CacheControl(_Strict):
    type: Literal["ephemeral"]
    ttl: str | None = None


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[Any] | None = Field(default=None, max_length=0)  # citations are not supported


class Base64Source(_Strict):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLSource(_Strict):
    type: Literal["url"]
    url: str


class ImageBlock(_Strict):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None

    def url(self) -> str:
        s = self.source
        return f"data:{s.media_type};base64,{s.data}" if isinstance(s, Base64Source) else s.url


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(_Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Strict):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> Message:
        if isinstance(self.content, list):
            for block in self.content:
                if self.role == "user" and isinstance(block, (ToolUseBlock, ThinkingBlock, RedactedThinkingBlock)):
                    raise ValueError(f"{_a(block.type)} block belongs in an assistant message")
                if self.role == "assistant" and isinstance(block, (ImageBlock, ToolResultBlock)):
                    raise ValueError(f"{_a(block.type)} block belongs in a user message")
        return self


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


class Metadata(_Strict):
    user_id: str | None = None


class ThinkingConfig(_Strict):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1024)


class Tool(_Strict):
    """A client tool (server tools such as web search have another ``type``)."""

    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None
    strict: bool | None = None


class ToolChoiceAuto(_Strict):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Strict):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Strict):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Strict):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")]


class JSONOutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Strict):
    format: JSONOutputFormat | None = None
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None


class CountTokensRequest(_Strict):
    """What shapes the prompt; all of ``/v1/messages/count_tokens``."""

    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    thinking: ThinkingConfig | None = None
    cache_control: CacheControl | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[Annotated[str, Field(max_length=MAX_STOP_LENGTH)]] | None = Field(default=None, max_length=MAX_STOP_SEQUENCES)
    stream: bool | None = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    speed: Literal["standard"] | None = None
    # kmlx extensions, as on chat completions
    conversation: str | None = None
    reset_conversation: bool | None = None

    @model_validator(mode="after")
    def _thinking_budget(self) -> MessagesRequest:
        t = self.thinking
        if t is not None and t.type == "enabled" and t.budget_tokens is None:
            raise ValueError("thinking.budget_tokens is required when thinking is enabled")
        if t is not None and t.budget_tokens is not None and t.budget_tokens >= self.max_tokens:
            raise ValueError("thinking.budget_tokens must be less than max_tokens")
        return self


# Fields Anthropic documents that kmlx cannot honour: a 400 naming them when set.
REFUSED = {
    "container": "code-execution containers are not supported",
    "mcp_servers": "MCP servers are not supported; run tools on the client",
    "context_management": "server-side context management is not supported",
    "diagnostics": "diagnostics are not supported",
}


# Discriminator values of the block and source unions (not field names).
_TAGS = frozenset({"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking", "base64", "url",
                   "auto", "any", "tool", "none"})


def parse_messages_request(raw: bytes) -> MessagesRequest:
    return parse_model(MessagesRequest, raw, refused=REFUSED, tags=_TAGS)


def parse_count_tokens_request(raw: bytes) -> CountTokensRequest:
    return parse_model(CountTokensRequest, raw, refused=REFUSED, tags=_TAGS)


def _system_text(system: str | list[TextBlock] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system or None
    return "\n\n".join(b.text for b in system) or None


def to_chat(body: MessagesRequest | CountTokensRequest) -> tuple[dict[str, Any], dict[tuple[int, int], str]]:
    """The chat body this request means, and the Anthropic names of the
    chat message parts (``messages[i].content[j]`` as the client wrote it)."""
    messages: list[dict[str, Any]] = []
    names: dict[tuple[int, int], str] = {}
    system = _system_text(body.system)
    if system:
        messages.append({"role": "system", "content": system})
    for i, m in enumerate(body.messages):
        if isinstance(m.content, str):
            messages.append({"role": m.role, "content": m.content})
            continue
        if m.role == "assistant":
            messages.append(_assistant(m.content))
            continue
        parts: list[dict[str, Any]] = []
        for j, block in enumerate(m.content):
            if isinstance(block, ToolResultBlock):
                messages.append(_tool_result(block, f"messages[{i}].content[{j}]"))
            elif isinstance(block, TextBlock):
                parts.append({"type": "text", "text": block.text})
            elif isinstance(block, ImageBlock):
                names[(len(messages), len(parts))] = f"messages[{i}].content[{j}]"
                parts.append({"type": "image_url", "image_url": {"url": block.url()}})
        if parts:
            messages.append({"role": "user", "content": parts})
    chat: dict[str, Any] = {"model": body.model, "messages": messages, **_tools(body)}
    if isinstance(body, MessagesRequest):
        chat.update(
            max_tokens=body.max_tokens,
            stream=bool(body.stream),
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            stop=body.stop_sequences,
            conversation=body.conversation,
            reset_conversation=body.reset_conversation,
        )
        if body.thinking is None or body.thinking.type == "disabled":
            # As Anthropic's API: no thinking blocks unless the request asks
            # for them (a script reading content[0].text keeps working on a
            # reasoning model).
            chat["strip_thinking"] = True
    return {k: v for k, v in chat.items() if v is not None}, names


def _tools(body: MessagesRequest | CountTokensRequest) -> dict[str, Any]:
    """tools, tool_choice and output_config as chat's fields."""
    out: dict[str, Any] = {}
    if body.tools:
        out["tools"] = [
            {"type": "function", "function": {"name": t.name, "parameters": t.input_schema,
                                              **({"description": t.description} if t.description else {})}}
            for t in body.tools
        ]
    choice = body.tool_choice
    if choice is not None:
        if isinstance(choice, ToolChoiceTool):
            out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if getattr(choice, "disable_parallel_tool_use", None):
            out["parallel_tool_calls"] = False
    config = body.output_config
    if config is not None and config.format is not None:
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": config.format.schema_}}
    if config is not None and config.effort is not None:
        out["reasoning_effort"] = config.effort
    return out


def _assistant(blocks: list[Any]) -> dict[str, Any]:
    """An assistant turn: its text, and its tool uses as tool calls. Thinking
    blocks are not sent back: chat templates drop past reasoning too."""
    text = "".join(b.text for b in blocks if isinstance(b, TextBlock))
    calls = [
        {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input, ensure_ascii=False)}}
        for b in blocks
        if isinstance(b, ToolUseBlock)
    ]
    msg: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tool_result(block: ToolResultBlock, where: str) -> dict[str, Any]:
    content = block.content
    if isinstance(content, list):
        if any(isinstance(b, ImageBlock) for b in content):
            raise APIError(400, f"{where}: images inside tool results are not supported", param=where, code="unsupported_content")
        content = "\n".join(b.text for b in content if isinstance(b, TextBlock))
    text = content or ""
    if block.is_error:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}
