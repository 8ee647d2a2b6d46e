"""OpenAI Responses requests: validation, and translation to a chat request.

``input`` (a string, or items: messages, function calls and their outputs,
reasoning) becomes chat messages after ``instructions`` and, with
``previous_response_id``, after the stored context of that response
(gateway/response_store.py). The chat body then takes the chat path to the
worker. Every field the spec documents is honoured or refused with a 400
naming it (docs/apis.md); unknown fields are ignored, as for chat.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from .body import parse_model
from .errors import APIError


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class InputImage(_Strict):
    type: Literal["input_image"]
    image_url: str  # a data: or http(s) URL (file ids need the Files API, which kmlx has not)
    detail: Literal["low", "high", "auto", "original"] | None = None


class OutputText(_Strict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class Refusal(_Strict):
    type: Literal["refusal"]
    refusal: str


Part = Annotated[InputText | InputImage | OutputText | Refusal, Field(discriminator="type")]


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText | OutputText]
    id: str | None = None
    status: str | None = None


class ReasoningText(_Strict):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Strict):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = []
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: str | None = None


def _item_kind(value: Any) -> str:
    """Messages may leave out ``type`` (OpenAI's "easy input message")."""
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if isinstance(kind, str) else "?"


Item = Annotated[
    Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")] | Annotated[FunctionCallOutputItem, Tag("function_call_output")] | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_kind),
]


class TextFormatText(_Strict):
    type: Literal["text"]


class TextFormatJSONObject(_Strict):
    type: Literal["json_object"]


class TextFormatJSONSchema(_Strict):
    type: Literal["json_schema"]
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Strict):
    format: Annotated[TextFormatText | TextFormatJSONObject | TextFormatJSONSchema, Field(discriminator="type")] | None = None
    # Local models have no verbosity control: "medium" (OpenAI's default, which
    # Codex CLI sends for GPT-5 model names) is what they do anyway; else a 400.
    verbosity: Literal["medium"] | None = None


class ReasoningConfig(_Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None  # accepted: kmlx returns the reasoning itself
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptions(_Strict):
    include_obfuscation: bool | None = None  # nothing to obfuscate on a local server


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(_Strict):
    type: Literal["function"]
    name: str


class ResponseRequest(_Strict):
    model: str | None = None
    input: str | list[Item]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    store: bool | None = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    truncation: Literal["disabled"] | None = None
    include: list[Literal["reasoning.encrypted_content", "message.output_text.logprobs"]] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    background: Literal[False] | None = None

    @property
    def wants_logprobs(self) -> bool:
        return "message.output_text.logprobs" in (self.include or [])


# Fields the spec documents that kmlx cannot honour: a 400 naming them when set.
REFUSED = {
    "conversation": "conversations are not supported; chain turns with previous_response_id",
    "prompt": "stored prompt templates are not supported",
    "max_tool_calls": "max_tool_calls is not supported",
    "context_management": "server-side context management is not supported",
    "moderation": "moderation is not supported",
}

_TAGS = frozenset({"message", "function_call", "function_call_output", "reasoning", "input_text", "input_image",
                   "output_text", "refusal", "text", "json_object", "json_schema"})


def parse_response_request(raw: bytes) -> ResponseRequest:
    body = parse_model(ResponseRequest, raw, refused=REFUSED, tags=_TAGS)
    if body.top_logprobs and not body.wants_logprobs:
        raise APIError(400, "top_logprobs: needs include: ['message.output_text.logprobs']", param="top_logprobs", code="invalid_value")
    return body


def input_messages(body: ResponseRequest) -> tuple[list[dict[str, Any]], dict[tuple[int, int], str]]:
    """This turn's input as chat messages (the chat form of each item), and
    the Responses names of image parts by (message, part) position, counted
    from the first message of this turn."""
    if isinstance(body.input, str):
        return [{"role": "user", "content": body.input}], {}
    messages: list[dict[str, Any]] = []
    names: dict[tuple[int, int], str] = {}
    for i, item in enumerate(body.input):
        if isinstance(item, MessageItem):
            messages.append(_message(item, i, len(messages), names))
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            out = item.output if isinstance(item.output, str) else "".join(p.text for p in item.output)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": out})
        # Reasoning items are not sent back to the model: chat templates drop past reasoning too.
    return messages, names


def _message(item: MessageItem, i: int, at: int, names: dict[tuple[int, int], str]) -> dict[str, Any]:
    if isinstance(item.content, str):
        return {"role": item.role, "content": item.content}
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(item.content):
        if isinstance(part, InputImage):
            names[(at, len(parts))] = f"input[{i}].content[{j}]"
            image: dict[str, Any] = {"url": part.image_url}
            if part.detail in ("low", "high", "auto"):
                image["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": image})
        elif isinstance(part, Refusal):
            parts.append({"type": "text", "text": part.refusal})
        else:
            parts.append({"type": "text", "text": part.text})
    return {"role": item.role, "content": parts}


def to_chat(body: ResponseRequest, history: list[dict[str, Any]], new: list[dict[str, Any]], conversation: str | None) -> dict[str, Any]:
    """The chat body of this turn: instructions, the stored history, the new input."""
    messages = ([{"role": "system", "content": body.instructions}] if body.instructions else []) + history + new
    chat: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stream": bool(body.stream),
        "conversation": conversation,
    }
    fmt = body.text.format if body.text else None
    if isinstance(fmt, TextFormatJSONSchema):
        spec = {"name": fmt.name, "schema": fmt.schema_, "description": fmt.description, "strict": fmt.strict}
        chat["response_format"] = {"type": "json_schema", "json_schema": {k: v for k, v in spec.items() if v is not None}}
    elif isinstance(fmt, TextFormatJSONObject):
        chat["response_format"] = {"type": "json_object"}
    if body.reasoning is not None and body.reasoning.effort is not None:
        chat["reasoning_effort"] = body.reasoning.effort
    if body.tools:
        chat["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in body.tools]
    choice = body.tool_choice
    if isinstance(choice, NamedFunction):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        chat["tool_choice"] = choice
    chat["parallel_tool_calls"] = body.parallel_tool_calls
    if body.wants_logprobs:
        chat["logprobs"] = True
        chat["top_logprobs"] = body.top_logprobs
    return {k: v for k, v in chat.items() if v is not None}


def item_id(prefix: str, response_id: str, n: int) -> str:
    """Stable ids for the items of one response: ``msg_<response hex>_<n>``."""
    return f"{prefix}_{response_id.removeprefix('resp_')}_{n}"


def stored_input_items(body: ResponseRequest, response_id: str) -> list[dict[str, Any]]:
    """This turn's input items as ``input_items`` lists them (with ids)."""
    if isinstance(body.input, str):
        items: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": body.input}]}]
    else:
        items = [item.model_dump(exclude_none=True, by_alias=True) for item in body.input]
    for n, item in enumerate(items):
        if isinstance(item.get("content"), str):
            item["content"] = [{"type": "input_text", "text": item["content"]}]
        item.setdefault("type", "message")
        item.setdefault("id", item_id("in", response_id, n))
        if item["type"] == "message":
            item.setdefault("status", "completed")
    return items
