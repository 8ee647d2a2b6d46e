"""Request fields for agents and tools: tools, tool_choice, response_format,
logit_bias, chat_template_kwargs, and the OpenAI fields kmlx refuses.

Validation only (strict types, OpenAI-shaped 400s naming the field); the
worker does the work (docs/agents.md). Every field here either works or is
refused: nothing is accepted and then ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.messages import ResponseFormat, ToolChoice

MAX_TOOLS = 128
MAX_LOGIT_BIAS = 1024
TOP_LOGPROBS_MAX = 20
# Template variables a client may not set through chat_template_kwargs: the
# worker sets them itself, and overriding them would break rendering.
RESERVED_TEMPLATE_KWARGS = frozenset(
    {"messages", "tools", "add_generation_prompt", "continue_final_message", "tokenize", "return_dict",
     "return_tensors", "chat_template", "conversation"}
)
# OpenAI request fields kmlx cannot honour: refused with a 400 that names them
# when set to anything but null (or the harmless value given).
REFUSED_FIELDS: dict[str, tuple[str, Any]] = {
    "audio": ("audio output is not supported", None),
    "prediction": ("predicted outputs are not supported", None),
    "web_search_options": ("web search is not supported", None),
    "functions": ("the deprecated `functions` field is not supported; use `tools`", None),
    "function_call": ("the deprecated `function_call` field is not supported; use `tool_choice`", None),
    "moderation": ("moderation is not supported", None),
    "verbosity": ("`verbosity` is not supported by local models", None),
    "store": ("stored completions are not supported", False),
}
# Accepted and without effect by their nature (identifiers and billing
# hints a local server has no use for); listed in docs/agents.md.
INERT_FIELDS = ("user", "safety_identifier", "metadata", "prompt_cache_key", "prompt_cache_retention",
                "prompt_cache_options", "service_tier")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Strict):
    type: Literal["function"]
    function: FunctionDef

    def wire(self) -> dict[str, Any]:
        fn: dict[str, Any] = {"name": self.function.name, "parameters": self.function.parameters or {"type": "object", "properties": {}}}
        if self.function.description:
            fn["description"] = self.function.description
        return {"type": "function", "function": fn}


class _NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: _NamedFunction


ToolChoiceField = Literal["none", "auto", "required"] | NamedToolChoice


class JSONSchemaSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(_Strict):
    type: Literal["text"]


class JSONObjectFormat(_Strict):
    type: Literal["json_object"]


class JSONSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormatField = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


def wire_response_format(fmt: TextFormat | JSONObjectFormat | JSONSchemaFormat | None) -> ResponseFormat:
    if isinstance(fmt, JSONSchemaFormat):
        # A schema-less json_schema is OpenAI's "any JSON object".
        schema = fmt.json_schema.schema_ if fmt.json_schema.schema_ is not None else {"type": "object"}
        return ResponseFormat(type="json_schema", schema=schema, name=fmt.json_schema.name)
    if isinstance(fmt, JSONObjectFormat):
        return ResponseFormat(type="json_object")
    return ResponseFormat()


def wire_tool_choice(choice: ToolChoiceField | None, tools: list[FunctionTool] | None) -> ToolChoice:
    """OpenAI's tool_choice -> the protocol's; raises ValueError (the
    caller names ``tool_choice``) when it asks for something impossible."""
    if choice is None:
        return ToolChoice(mode="auto" if tools else "none")
    if not tools and choice != "none":
        raise ValueError("tool_choice needs tools")
    if isinstance(choice, NamedToolChoice):
        names = {t.function.name for t in tools or []}
        if choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not in tools")
        return ToolChoice(mode="function", name=choice.function.name)
    return ToolChoice(mode=choice)


def check_logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's ``{"token id": bias}`` with biases in [-100, 100]."""
    if not bias:
        return None
    if len(bias) > MAX_LOGIT_BIAS:
        raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
    out: dict[int, float] = {}
    for key, value in bias.items():
        if not key.isdigit() or len(key) > 9:
            raise ValueError(f"keys must be token ids (non-negative integers as strings), not {key[:20]!r}")
        if not -100.0 <= value <= 100.0:
            raise ValueError(f"bias for token {key} must be between -100 and 100")
        out[int(key)] = float(value)
    return out


def check_template_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    if not kwargs:
        return None
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & set(kwargs))
    if reserved:
        raise ValueError(f"{reserved[0]!r} is set by the server and cannot be passed to the template")
    return kwargs


def refused_field(data: dict[str, Any]) -> tuple[str, str] | None:
    """The first OpenAI field in ``data`` that kmlx refuses, with why."""
    for name, (why, harmless) in REFUSED_FIELDS.items():
        if name in data and data[name] is not None and data[name] != harmless:
            return name, why
    modalities = data.get("modalities")
    if modalities is not None and modalities != ["text"]:
        return "modalities", "only text output is supported"
    return None
