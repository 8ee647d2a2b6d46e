"""What the scheduler asks of prompt caching: a plan per request, a commit
per finished turn, and the whitelisted conversation-cache control calls.

Runs on the compute thread (it touches MLX arrays).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.messages import CacheInfo, ChatRequest

from . import files
from .conversations import Conversation, ConversationLimits, ConversationStore
from .prefix import PrefixCache
from .views import Cache, cache_nbytes

log = logging.getLogger("kmlx.worker.kv")


@dataclass
class KVConfig:
    enabled: bool = True
    prefix_enabled: bool = True
    prefix_dir: Path = Path(".cache/mlx_prompt_caches")
    disk_dir: Path = Path(".cache/kmlx_conversations")
    disk_max_bytes: int = 200 << 30
    disk_max_fraction: float = 0.90
    limits: ConversationLimits = field(default_factory=ConversationLimits)


@dataclass
class Plan:
    info: CacheInfo
    cache: Cache | None = None
    conversation_id: str | None = None  # set when finishing should commit
    system_len: int = 0


class ControlError(Exception):
    def __init__(self, message: str, status: int, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class PromptCacheManager:
    def __init__(self, config: KVConfig, *, model_id: str, tokenizer_hash: str):
        self.config = config
        self.model_id = model_id
        self.tokenizer_hash = tokenizer_hash
        self.store = ConversationStore(config.limits)
        self.prefix = PrefixCache(config.prefix_dir, model_id) if config.enabled and config.prefix_enabled else None
        if self.prefix is not None:
            self.prefix.load()
        self.hits = 0
        self.cached_tokens_served = 0
        self._busy: set[str] = set()  # conversations with a request running

    # ------------------------------------------------------------------ #
    def plan(self, req: ChatRequest, prompt: list[int], system_len: int) -> Plan:
        n = len(prompt)
        conv_id = req.conversation_id
        if not self.config.enabled or req.reset_conversation:
            return Plan(CacheInfo("disabled", 0, n))
        if conv_id is None:
            return self._with_prefix(Plan(CacheInfo("none", 0, n), system_len=system_len), prompt, system_len)
        if conv_id in self._busy:
            # Another request of this conversation is running: this one runs
            # uncached and does not commit, so neither corrupts the other.
            return Plan(CacheInfo("disabled", 0, n))
        self._busy.add(conv_id)
        if self.store.get(conv_id) is None:
            self._load_saved(conv_id)
        reuse = self.store.lookup(conv_id, prompt)
        plan = Plan(CacheInfo(reuse.mode, reuse.cached_tokens, n - reuse.cached_tokens), reuse.cache, conv_id, system_len)
        plan = self._with_prefix(plan, prompt, system_len)
        if (c := self.store.get(conv_id)) is not None:
            c.busy = True
        if plan.info.cached_tokens:
            self.hits += 1
            self.cached_tokens_served += plan.info.cached_tokens
        return plan

    def _with_prefix(self, plan: Plan, prompt: list[int], system_len: int) -> Plan:
        """Start from the system-prefix cache when it beats what we have."""
        if self.prefix is None or plan.info.cached_tokens >= system_len:
            return plan
        view = self.prefix.match(prompt, system_len)
        if view is None:
            return plan
        plan.cache = view
        plan.info = CacheInfo(plan.info.mode, system_len, len(prompt) - system_len)
        return plan

    def finish(self, plan: Plan, tokens: list[int] | None, cache: Cache | None, *, hashes: list[str], boundaries: list[int]) -> None:
        """Called for every request once; commits only a normal finish."""
        if plan.conversation_id is not None:
            self._busy.discard(plan.conversation_id)
            if (conv := self.store.get(plan.conversation_id)) is not None:
                conv.busy = False
        if tokens is None or cache is None:
            return  # aborted or failed: the conversation stays as it was
        if self.prefix is not None and plan.system_len:
            self.prefix.offer(tokens, cache, plan.system_len)
        if plan.conversation_id is not None:
            self.store.commit(plan.conversation_id, tokens, cache, boundaries, hashes)

    # ------------------------------------------------------------------ #
    # Control calls (routed here by the engine): save, load, stats, delete.
    def _stem(self, args: dict[str, Any]) -> tuple[str, str]:
        conv_id = args.get("conversation_id")
        if not isinstance(conv_id, str) or not conv_id or len(conv_id) > 256 or "\x00" in conv_id:
            raise ControlError("a conversation id is required", 400, "missing_conversation_id")
        return conv_id, files.safe_name(conv_id)

    def save(self, args: dict[str, Any]) -> dict[str, Any]:
        conv_id, stem = self._stem(args)
        conv = self.store.get(conv_id)
        if conv is None:
            raise ControlError(f"conversation {conv_id!r} has no cache in memory", 404, "conversation_not_found")
        d = self.config.disk_dir
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        estimate = cache_nbytes(conv.cache)
        existing = files.directory_bytes(d) - sum(
            (d / f"{stem}{s}").stat().st_size for s in (".safetensors", ".json") if (d / f"{stem}{s}").exists()
        )
        if existing + estimate > self.config.disk_max_bytes:
            raise ControlError("saving would exceed --conversation-disk-max-gb", 413, "disk_budget_exceeded")
        if files.disk_fraction_used(d) > self.config.disk_max_fraction:
            raise ControlError("the disk is over 90% full; not saving", 413, "disk_full")
        title = args.get("title")
        meta = {
            "id": conv_id,
            "title": title if isinstance(title, str) else None,
            "tokens": conv.tokens,
            "boundaries": conv.boundaries,
            "hashes": conv.hashes,
            "model": self.model_id,
            "tokenizer_hash": self.tokenizer_hash,
            "ts": time.time(),
        }
        try:
            path, size = files.save_cache(d, stem, conv.cache, meta)
        except OSError as exc:
            raise ControlError(f"could not save: {exc.strerror or exc}", 507, "disk_error") from None
        return {"status": "saved", "id": conv_id, "path": str(path), "bytes": size, "tokens": len(conv.tokens)}

    def load(self, args: dict[str, Any]) -> dict[str, Any]:
        conv_id, stem = self._stem(args)
        conv = self._load_saved(conv_id, strict=True)
        if conv is None:
            raise ControlError(f"nothing saved for conversation {conv_id!r}", 404, "conversation_not_found")
        return {"status": "loaded", "id": conv_id, "tokens": len(conv.tokens)}

    def _load_saved(self, conv_id: str, *, strict: bool = False) -> Conversation | None:
        try:
            saved = files.load_cache(
                self.config.disk_dir, files.safe_name(conv_id), model_id=self.model_id, tokenizer_hash=self.tokenizer_hash
            )
        except files.CacheFileError as exc:
            if strict:
                raise ControlError(str(exc), exc.status, exc.code) from None
            log.warning("not reusing saved cache of %s: %s", conv_id, exc)
            return None
        if saved is None:
            return None
        m = saved.meta
        conv = Conversation(list(m.get("tokens", [])), saved.cache, list(m.get("boundaries", [])), list(m.get("hashes", [])))
        if len(conv.tokens) != (saved.cache[0].offset if saved.cache else -1):
            if strict:
                raise ControlError("cache file does not match its metadata", 422, "cache_file_corrupt")
            return None
        self.store.put(conv_id, conv)
        return conv

    def stats(self, _args: dict[str, Any]) -> dict[str, Any]:
        items = []
        d = self.config.disk_dir
        if d.exists():
            for meta_path in sorted(d.glob("*.json")):
                try:
                    meta = files.read_meta(d, meta_path.stem) or {}
                except files.CacheFileError:
                    continue
                items.append(
                    {
                        "id": meta.get("id"),
                        "title": meta.get("title"),
                        "tokens": len(meta.get("tokens", [])),
                        "ts": meta.get("ts"),
                        "size_bytes": meta.get("size_bytes"),
                    }
                )
        memory = [{"id": cid, "tokens": len(c.tokens), "bytes": c.nbytes} for cid, c in self.store.items()]
        return {"items": items, "in_memory": memory}

    def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        conv_id, stem = self._stem(args)
        found = files.delete_cache(self.config.disk_dir, stem)
        found = self.store.drop(conv_id) or found
        return {"status": "deleted" if found else "not_found", "id": conv_id}

    def save_all(self) -> int:
        """On shutdown: persist every conversation so a restart resumes them."""
        saved = 0
        for conv_id, _conv in self.store.items():
            try:
                self.save({"conversation_id": conv_id, "title": "saved at shutdown"})
                saved += 1
            except ControlError as exc:
                log.warning("not saving %s at shutdown: %s", conv_id, exc)
        return saved

    def summary(self) -> dict[str, Any]:
        return {
            "enabled": self.config.enabled,
            "conversations": len(self.store),
            "conversation_tokens": self.store.tokens,
            "conversation_bytes": self.store.nbytes,
            "evictions": self.store.evictions,
            "hits": self.hits,
            "cached_tokens_served": self.cached_tokens_served,
            "prefix_tokens": len(self.prefix.tokens) if self.prefix else 0,
            "prefix_saves": self.prefix.saves if self.prefix else 0,
        }
