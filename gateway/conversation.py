"""Which conversation a request belongs to (kamiwaza-mlx's resolution order)."""

from __future__ import annotations

import re
from typing import Protocol

from fastapi import Request

from .errors import APIError

MAX_ID_LENGTH = 256
DEFAULT_ID = "_default"
# Printable ASCII except path separators and quotes: safe in headers, logs and
# (after the worker's own sanitising) file names.
_VALID = re.compile(r"^[A-Za-z0-9_.:@+=,-]+$")


def validate_conversation_id(value: str, *, param: str) -> str:
    if len(value) > MAX_ID_LENGTH:
        raise APIError(400, f"conversation id is longer than {MAX_ID_LENGTH} characters", param=param, code="invalid_conversation_id")
    if not _VALID.match(value) or value in (".", ".."):
        raise APIError(
            400,
            "conversation id may contain only letters, digits and _ . : @ + = , -",
            param=param,
            code="invalid_conversation_id",
        )
    return value


class NamesConversation(Protocol):
    """A request body with kmlx's conversation fields (chat, completions, ...)."""

    conversation: str | None
    conversation_id: str | None


def resolve_conversation_id(body: NamesConversation, request: Request, *, auto_id: bool) -> str:
    """Body ``conversation`` -> body ``conversation_id`` -> header
    ``X-Conversation-Id`` -> ``client:<ip>`` (auto-id on) -> ``_default``."""
    for value, param in (
        (body.conversation, "conversation"),
        (body.conversation_id, "conversation_id"),
        (request.headers.get("x-conversation-id"), "X-Conversation-Id"),
    ):
        if value:
            return validate_conversation_id(value, param=param)
    if auto_id and request.client is not None:
        return validate_conversation_id(f"client:{request.client.host}", param="X-Conversation-Id")
    return DEFAULT_ID
