"""Stored responses (`store: true` on /v1/responses), bounded in count,
bytes and age, in the gateway's memory.

An entry keeps what a follow-up needs: the chat messages the response's
turn ended with (its whole context, so evicting an older response never
breaks a newer one's chain), the response object for ``GET``, the input
items for ``input_items``, and the conversation id its chain runs on — so
the worker's conversation KV cache makes a follow-up prefill only its new
tokens. Memory is not shared between gateways: behind several gateways, a
chain continues only where it was stored (pin clients to a gateway, or send
the full history with ``store: false``). docs/apis.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024


@dataclass
class ResponseStoreConfig:
    max_responses: int = 1000  # 0: nothing is stored (store: true is then a 400)
    max_bytes: int = 256 * MIB
    ttl_seconds: float = 24 * 3600.0


def add_response_store_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stored responses, /v1/responses (docs/apis.md)")
    g.add_argument("--responses-max-stored", type=int, default=1000,
                   help="most responses kept for previous_response_id and GET (oldest evicted first); 0: store none")
    g.add_argument("--responses-max-mb", type=float, default=256.0, help="memory for stored responses, all together")
    g.add_argument("--responses-ttl", type=float, default=24 * 3600.0, help="seconds a stored response is kept")


def response_store_config_from_args(args: argparse.Namespace) -> ResponseStoreConfig:
    return ResponseStoreConfig(
        max_responses=max(0, args.responses_max_stored),
        max_bytes=max(0, int(args.responses_max_mb * MIB)),
        ttl_seconds=max(1.0, args.responses_ttl),
    )


@dataclass
class StoredResponse:
    response: dict[str, Any]  # the response object, as GET returns it
    context: list[dict[str, Any]]  # chat messages up to the end of this turn (instructions excluded)
    input_items: list[dict[str, Any]]  # this turn's input items, with ids
    conversation_id: str | None  # the KV conversation its chain runs on
    nbytes: int = 0
    stored_at: float = field(default_factory=time.monotonic)


class ResponseStore:
    def __init__(self, config: ResponseStoreConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.config.max_responses > 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response_id: str, entry: StoredResponse) -> bool:
        """Keep ``entry``; False when it alone is over the byte budget."""
        entry.nbytes = len(json.dumps([entry.response, entry.context, entry.input_items], ensure_ascii=False, default=str))
        entry.stored_at = self.clock()
        if not self.enabled or entry.nbytes > self.config.max_bytes:
            return False
        self.delete(response_id)
        self._items[response_id] = entry
        self.nbytes += entry.nbytes
        self._expire()
        while len(self._items) > self.config.max_responses or self.nbytes > self.config.max_bytes:
            self._drop(next(iter(self._items)))
            self.evictions += 1
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        if response_id not in self._items:
            return False
        self._drop(response_id)
        return True

    def _drop(self, response_id: str) -> None:
        self.nbytes -= self._items.pop(response_id).nbytes

    def _expire(self) -> None:
        cutoff = self.clock() - self.config.ttl_seconds
        while self._items:
            oldest_id, oldest = next(iter(self._items.items()))
            if oldest.stored_at >= cutoff:
                return
            self._drop(oldest_id)
