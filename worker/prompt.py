"""Chat messages -> prompt token ids, through the model's own chat template."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol.chat import ChatMessage, ContentPart, TextPart, template_dict

from .text_stream import THINK_OPEN

if TYPE_CHECKING:
    from .tool_format import ToolPlan


class PromptError(ValueError):
    """The request cannot be rendered; the message is shown to the client."""

    def __init__(self, message: str, *, param: str | None = "messages", code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    starts_in_reasoning: bool  # the template opened <think> for the model
    system_tokens: int = 0  # length of the rendered leading system message(s)
    message_hashes: tuple[str, ...] = ()
    last_message_end: int = 0  # where the generation prompt starts (0: not asked for, or not found)


def _text_of(content: str | list[ContentPart] | None, *, model_id: str, index: int) -> str:
    """Flatten OpenAI content (a string or a list of parts) for a text model."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part in content:
        if isinstance(part, TextPart):
            texts.append(part.text)
        else:
            raise PromptError(
                f"model {model_id} does not accept images or video (messages[{index}])",
                param=f"messages[{index}].content",
                code="unsupported_content",
            )
    return "\n".join(texts)


def normalise_messages(messages: list[ChatMessage], *, model_id: str) -> list[dict[str, Any]]:
    """What the template sees: string contents, and ``developer`` as ``system``."""
    return [template_dict(m, _text_of(m.content, model_id=model_id, index=i)) for i, m in enumerate(messages)]


def template_source(tokenizer: Any) -> str:
    """The chat template's text (all named templates, when there are several)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(str(t) for t in template.values())
    return template if isinstance(template, str) else ""


def template_variables(
    tokenizer: Any,
    requested: dict[str, Any] | None,
    *,
    defaults: dict[str, Any] | None = None,
    reasoning_effort: str | None = None,
) -> dict[str, Any]:
    """Extra template variables: the worker's defaults, then the request's
    ``chat_template_kwargs``, then ``reasoning_effort``. A variable the
    template never reads would be silently ignored, so it is refused."""
    source = template_source(tokenizer)

    def reads(name: str) -> bool:
        return re.search(rf"\b{re.escape(name)}\b", source) is not None

    out = {k: v for k, v in (defaults or {}).items() if reads(k)}
    for key, value in (requested or {}).items():
        if not reads(key):
            raise PromptError(
                f"this model's chat template does not use {key!r}", param=f"chat_template_kwargs.{key}", code="unsupported_parameter"
            )
        out[key] = value
    if reasoning_effort is not None:
        if reads("reasoning_effort"):
            out["reasoning_effort"] = reasoning_effort
        elif reads("enable_thinking"):  # Qwen3-style switch: "none"/"minimal" turn thinking off
            out["enable_thinking"] = reasoning_effort not in ("none", "minimal")
        else:
            raise PromptError(
                "this model's chat template has no reasoning effort setting", param="reasoning_effort", code="unsupported_parameter"
            )
    return out


def render_chat_text(
    tokenizer: Any,
    chat: list[dict[str, Any]],
    tools: ToolPlan | None = None,
    variables: dict[str, Any] | None = None,
) -> str:
    """The model's chat template over ``chat``: a generation prompt after a
    user turn, or a continuation of a final assistant message (prefill).
    ``tools``: how tools and tool history are shown (tool_format.py);
    ``variables``: extra template variables (``template_variables``)."""
    if tools is not None:
        chat = tools.chat(chat)
    return _apply_template(tokenizer, chat, tools.template_tools() if tools is not None else None, variables)


def _apply_template(
    tokenizer: Any, chat: list[dict[str, Any]], tools: list[dict[str, Any]] | None, variables: dict[str, Any] | None
) -> str:
    kwargs: dict[str, Any] = dict(variables or {})
    kwargs["add_generation_prompt"] = chat[-1]["role"] != "assistant"
    if chat[-1]["role"] == "assistant":
        kwargs["continue_final_message"] = True
    if tools:
        kwargs["tools"] = tools
    try:
        return tokenizer.apply_chat_template(chat, tokenize=False, **kwargs)
    except Exception as exc:  # jinja raises whatever the template author chose
        raise PromptError(f"the chat template rejected these messages: {exc}") from None


def render_prompt(
    tokenizer: Any,
    messages: list[ChatMessage],
    *,
    model_id: str,
    tools: ToolPlan | None = None,
    variables: dict[str, Any] | None = None,
    mark_last_message: bool = False,
) -> Prompt:
    """``mark_last_message``: also find where the last message ends (the
    prompt cache checkpoints there for caches that cannot be cut)."""
    chat = normalise_messages(messages, model_id=model_id)
    if tools is not None:
        chat = tools.chat(chat)
    template_tools = tools.template_tools() if tools is not None else None
    text = _apply_template(tokenizer, chat, template_tools, variables)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise PromptError("the rendered prompt is empty")
    # Templates such as Qwen3's open the block in the generation prompt; the
    # model's output then only ever shows the closing tag.
    opened = text.rstrip().endswith(THINK_OPEN)
    return Prompt(
        token_ids=list(ids),
        starts_in_reasoning=opened,
        system_tokens=_system_tokens(tokenizer, chat, ids, variables),
        message_hashes=tuple(_hash(m) for m in chat),
        last_message_end=_last_message_end(tokenizer, chat, template_tools, variables, text, ids) if mark_last_message else 0,
    )


def _last_message_end(
    tokenizer: Any, chat: list[dict[str, Any]], tools: list[dict[str, Any]] | None, variables: dict[str, Any] | None,
    text: str, ids: list[int],
) -> int:
    """Where the generation prompt (``<|im_start|>assistant``, an opened
    ``<think>``, ...) starts in ``ids``: the history's end, which the next
    turn's prompt shares even when the template re-renders the reply."""
    if chat[-1]["role"] == "assistant":
        return 0
    kwargs: dict[str, Any] = {**(variables or {}), "add_generation_prompt": False}
    if tools:
        kwargs["tools"] = tools
    try:
        head = tokenizer.apply_chat_template(chat, tokenize=False, **kwargs)
    except Exception:
        return 0
    if not text.startswith(head) or len(head) == len(text):
        return 0
    tail = tokenizer.encode(text[len(head):], add_special_tokens=False)
    return len(ids) - len(tail) if 0 < len(tail) < len(ids) and ids[-len(tail):] == tail else 0


def _system_tokens(tokenizer: Any, chat: list[dict[str, Any]], ids: list[int], variables: dict[str, Any] | None = None) -> int:
    """Where the leading system message(s) end in ``ids`` (0 if none, or if
    the template renders them differently on their own)."""
    n = 0
    while n < len(chat) and chat[n]["role"] == "system":
        n += 1
    if n == 0 or n == len(chat):
        return 0
    try:
        text = tokenizer.apply_chat_template(chat[:n], tokenize=False, add_generation_prompt=False, **(variables or {}))
    except Exception:
        return 0
    head = tokenizer.encode(text, add_special_tokens=False)
    return len(head) if head == ids[: len(head)] else 0


def _hash(message: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(message, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
