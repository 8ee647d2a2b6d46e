"""kamiwaza-mlx compatibility: what the gateway keeps so that clients written
for kamiwaza-mlx (the MLX server kmlx replaces) work unchanged.

The non-OpenAI *names* live here: the ``usage`` aliases, ``metadata`` on a
completion, and the top-level ``images`` list of a request. kmlx features
kamiwaza-mlx also had (conversation ids and their resolution order,
``X-Conv-*`` headers, ``/v1/conv_kv``) are kmlx's own and live with their
concept (conversation.py, dispatch.py, routes/conv_kv.py). The README's
"kamiwaza-mlx compatibility" section lists all of it.
"""

from __future__ import annotations

from typing import Any

from protocol.messages import Usage

from .errors import APIError


def usage_aliases(u: Usage) -> dict[str, Any]:
    """kamiwaza-mlx's names for the OpenAI usage fields."""
    return {
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def completion_metadata(conversation_id: str | None) -> dict[str, Any]:
    """A whole (non-streamed) completion names its conversation."""
    return {"conversation_id": conversation_id}


def attach_images(messages: list[dict[str, Any]], images: list[str] | None) -> list[dict[str, Any]]:
    """The request's top-level ``images`` (URLs), appended as image parts
    after the last user message's content."""
    if not images:
        return messages
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise APIError(400, "`images` needs a user message to attach to", param="images")
    content = messages[last_user]["content"]
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    parts += [{"type": "image_url", "image_url": {"url": u}} for u in images]
    messages[last_user]["content"] = parts
    return messages


def top_level_image_names(body: Any) -> dict[tuple[int, int], str]:
    """Where ``attach_images`` put each of a chat request's top-level
    ``images``, as (message, part) -> ``images[k]``, so errors name the
    field the client sent."""
    if not body.images:
        return {}
    last_user = max(i for i, m in enumerate(body.messages) if m.role == "user")
    content = body.messages[last_user].content
    first = len(content) if isinstance(content, list) else 1
    return {(last_user, first + k): f"images[{k}]" for k in range(len(body.images))}
