"""Chat messages as they travel to the worker: OpenAI's shape, typed.

The gateway validates what clients send (gateway/schemas.py) and resolves
every image or video to a ``data:`` URL before building these, so the
worker can trust their shape. The chat template sees them as plain dicts
again (``template_dict``).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class MediaURL(msgspec.Struct, omit_defaults=True):
    url: str  # a data: URL once the gateway has checked it
    detail: str | None = None


class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImagePart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: MediaURL


class VideoPart(msgspec.Struct, tag_field="type", tag="video_url"):
    video_url: MediaURL


ContentPart = TextPart | ImagePart | VideoPart
MediaPart = ImagePart | VideoPart


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str | dict[str, Any]  # OpenAI sends a JSON string; some clients an object


class ToolCall(msgspec.Struct):
    """A tool call an assistant message made (sent back in later turns)."""

    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


Role = Literal["system", "developer", "user", "assistant", "tool"]


class ChatMessage(msgspec.Struct, omit_defaults=True):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None  # a tool message: the call it answers


def media_url(part: MediaPart) -> str:
    return part.image_url.url if isinstance(part, ImagePart) else part.video_url.url


def has_media(messages: list[ChatMessage]) -> bool:
    return any(
        isinstance(p, (ImagePart, VideoPart)) for m in messages if isinstance(m.content, list) for p in m.content
    )


def template_dict(message: ChatMessage, content: Any) -> dict[str, Any]:
    """What a chat template sees: ``developer`` as ``system``, the given
    (already flattened or placeholder) content, and the tool fields."""
    out: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": content}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls is not None:
        out["tool_calls"] = msgspec.to_builtins(message.tool_calls)
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def chat_messages(raw: list[dict[str, Any]]) -> list[ChatMessage]:
    """OpenAI message dicts (already validated) -> typed messages.
    Raises ``msgspec.ValidationError`` naming the field that does not fit."""
    return msgspec.convert(raw, list[ChatMessage])
