"""Chat messages with images or video -> model inputs (token ids + pixels).

Runs on the media thread. ``prepare_media`` decodes every media part
(``media.py``) and renders the chat template with an image placeholder
where each image was (a video becomes its frames, in order); ``tokenize``
lets the model's mlx-vlm processor expand the placeholders, tokenize and
make the input arrays. The prompt size the client is billed
for is the length of that token sequence, image tokens included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol.chat import ChatMessage, ImagePart, TextPart, media_url, template_dict

from ..prompt import PromptError, render_chat_text
from ..text_stream import THINK_OPEN
from .media import MediaError, MediaLimits, data_url_bytes, load_image, load_video_frames

if TYPE_CHECKING:
    from ..tool_format import ToolPlan


@dataclass
class PreparedMedia:
    """Decoded media and the rendered template (no MLX yet)."""

    text: str  # the rendered chat template, one placeholder per image
    images: list[Any]  # RGB PIL images in prompt order (video frames included)
    starts_in_reasoning: bool


@dataclass
class VisionPrompt:
    input_ids: Any  # mx.array (1, L)
    pixel_values: Any  # mx.array or None
    extra: dict[str, Any]  # the rest of the processor output (e.g. image_grid_thw)
    token_ids: list[int]
    starts_in_reasoning: bool
    images: int  # images fed to the model (video frames included)


def _chat_and_images(
    messages: list[ChatMessage], limits: MediaLimits
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Template-ready messages (media parts -> ``{"type": "image"}``) and the
    decoded images in prompt order."""
    chat: list[dict[str, Any]] = []
    images: list[Any] = []
    for i, m in enumerate(messages):
        content: Any = m.content
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for j, part in enumerate(content):
                param = f"messages[{i}].content[{j}]"
                if isinstance(part, TextPart):
                    parts.append({"type": "text", "text": part.text})
                elif isinstance(part, ImagePart):
                    images.append(load_image(data_url_bytes(media_url(part), param=param), limits, param=param))
                    parts.append({"type": "image"})
                else:
                    frames = load_video_frames(data_url_bytes(media_url(part), param=param), limits, param=param)
                    images.extend(frames)
                    parts.extend({"type": "image"} for _ in frames)
            if not any(p["type"] == "image" for p in parts):
                content = "\n".join(p["text"] for p in parts)  # text-only: plain string, as text models see it
            else:
                content = parts
        chat.append(template_dict(m, content if content is not None else ""))
    return chat, images


def prepare_media(
    tokenizer: Any,
    messages: list[ChatMessage],
    limits: MediaLimits,
    *,
    tools: ToolPlan | None = None,
    variables: dict[str, Any] | None = None,
) -> PreparedMedia:
    """Decode every media part and render the chat template around
    placeholders. Raises MediaError or PromptError."""
    chat, images = _chat_and_images(messages, limits)
    text = render_chat_text(tokenizer, chat, tools, variables)
    return PreparedMedia(text, images, text.rstrip().endswith(THINK_OPEN))


def tokenize(processor: Any, prepared: PreparedMedia) -> VisionPrompt:
    """Expand the image placeholders, tokenize, make the input arrays (the
    model's own mlx-vlm processor). ``processor`` must be private to the
    calling thread (see ``media_thread.py``)."""
    try:
        inputs = processor(images=prepared.images or None, text=[prepared.text], add_special_tokens=False)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise PromptError(f"the model's processor rejected these inputs: {exc}") from None
    data = dict(inputs)
    input_ids = data.pop("input_ids")
    data.pop("attention_mask", None)
    pixel_values = data.pop("pixel_values", None)
    token_ids = [int(t) for t in input_ids.reshape(-1).tolist()]
    if not token_ids:
        raise PromptError("the rendered prompt is empty")
    return VisionPrompt(
        input_ids=input_ids.reshape(1, -1),
        pixel_values=pixel_values,
        extra={k: v for k, v in data.items() if v is not None},
        token_ids=token_ids,
        starts_in_reasoning=prepared.starts_in_reasoning,
        images=len(prepared.images),
    )


__all__ = ["MediaError", "PreparedMedia", "PromptError", "VisionPrompt", "prepare_media", "tokenize"]
