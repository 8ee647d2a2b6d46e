"""The chat history and the conversation id that names it on the server.

The id is sent with every request so the gateway's KV cache serves
follow-ups; a new id (Ctrl-N) starts a fresh cache. A turn enters the history
only once its answer finished, mirroring the server's commit rule: an
interrupted or failed turn leaves the conversation as it was, so the next
request still matches the cached prefix.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

Content = str | list[dict[str, Any]]


def new_conversation_id() -> str:
    return f"kmlx-{uuid.uuid4().hex[:16]}"


@dataclass
class Conversation:
    id: str = field(default_factory=new_conversation_id)
    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    def request_messages(self, user: Content) -> list[dict[str, Any]]:
        """The full message list for a request that asks `user` next."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages + [{"role": "user", "content": user}]

    def commit(self, user: Content, answer: str) -> None:
        """Record a finished turn (the streamed answer included: kamiwaza-mlx's client forgot it)."""
        self.messages.append({"role": "user", "content": user})
        self.messages.append({"role": "assistant", "content": answer})

    def reset(self, conversation_id: str | None = None) -> str:
        """Forget the history and take a new id; the system prompt stays."""
        self.messages.clear()
        self.id = conversation_id or new_conversation_id()
        return self.id

    @property
    def turns(self) -> int:
        return len(self.messages) // 2
