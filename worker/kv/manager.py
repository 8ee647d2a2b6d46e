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
from .validate import Reference, reference_for
from .views import Cache, cache_length, cache_nbytes

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
        self.reference: Reference | None = None  # this model's cache layout, once bound
        for d in (config.disk_dir, config.prefix_dir):
            files.remove_stale_temporaries(d)  # left by a process killed mid-save
        self.hits = 0
        self.cached_tokens_served = 0
        self._busy: set[str] = set()  # conversations with a request running

    def bind_model(self, model: Any) -> None:
        """Learn the model's cache layout (every loaded file is checked
        against it), then adopt the system-prefix cache from disk."""
        try:
            self.reference = reference_for(model)
        except Exception as exc:  # an exotic model: files are still checked for consistency
            log.warning("could not derive the model's cache layout (%s); loaded caches get structural checks only", exc)
        if self.prefix is not None:
            self.prefix.load(self.reference)

    # ------------------------------------------------------------------ #
    def plan(self, req: ChatRequest, prompt: list[int], system_len: int) -> Plan:
        """What this request can reuse. Raises ControlError (4xx naming the
        conversation) when its saved cache is damaged: that request alone
        fails, and the file is quarantined so the next one starts fresh."""
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
        if self.store.get(conv_id) is None:
            self._load_saved(conv_id)
        self._busy.add(conv_id)
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
        except OSError as exc:  # the partial files are gone already (files.temporary_file)
            if files.is_disk_full(exc):
                raise ControlError(f"the disk is full; conversation {conv_id!r} was not saved", 507, "disk_full") from None
            raise ControlError(f"could not save conversation {conv_id!r}: {exc.strerror or exc}", 507, "disk_error") from None
        # The file name, not the server's absolute path (clients need no more).
        return {"status": "saved", "id": conv_id, "path": path.name, "bytes": size, "tokens": len(conv.tokens)}

    def load(self, args: dict[str, Any]) -> dict[str, Any]:
        conv_id, stem = self._stem(args)
        conv = self._load_saved(conv_id, strict=True)
        if conv is None:
            raise ControlError(f"nothing saved for conversation {conv_id!r}", 404, "conversation_not_found")
        return {"status": "loaded", "id": conv_id, "tokens": len(conv.tokens)}

    def _load_saved(self, conv_id: str, *, strict: bool = False) -> Conversation | None:
        """Adopt a saved conversation. A damaged file is quarantined and
        raises ControlError; another model's file is refused (``strict``)
        or ignored (a chat turn then starts fresh)."""
        d, stem = self.config.disk_dir, files.safe_name(conv_id)
        try:
            saved = files.load_cache(
                d, stem, model_id=self.model_id, tokenizer_hash=self.tokenizer_hash,
                reference=self.reference, max_bytes=self.config.limits.max_bytes + (16 << 20),
            )
            conv = None if saved is None else self._conversation(saved)
        except files.CacheFileError as exc:
            if exc.damaged:
                moved = files.quarantine(d, stem)
                log.warning("saved cache of conversation %s is damaged (%s); moved to %s", conv_id, exc,
                            ", ".join(str(p) for p in moved) or "nowhere (deleted)")
                raise ControlError(
                    f"the saved cache of conversation {conv_id!r} is damaged and was set aside ({exc}); "
                    "the next request starts this conversation afresh", exc.status, exc.code,
                ) from None
            if strict:
                raise ControlError(f"conversation {conv_id!r}: {exc}", exc.status, exc.code) from None
            log.warning("not reusing saved cache of %s: %s", conv_id, exc)
            return None
        if conv is not None:
            self.store.put(conv_id, conv)
        return conv

    def _conversation(self, saved: files.SavedCache) -> Conversation:
        """The sidecar's record, checked against the cache it describes."""
        m = saved.meta
        tokens, boundaries, hashes = m.get("tokens"), m.get("boundaries", []), m.get("hashes", [])
        vocab = self.reference.vocab_size if self.reference is not None else None
        ok = (
            isinstance(tokens, list)
            and all(type(t) is int and 0 <= t and (vocab is None or t < vocab) for t in tokens)
            and isinstance(boundaries, list) and all(type(b) is int for b in boundaries)
            and isinstance(hashes, list) and all(isinstance(h, str) for h in hashes)
        )
        if not ok:
            raise files.CacheFileError("cache metadata has malformed tokens, boundaries or hashes")
        if len(tokens) != cache_length(saved.cache):  # type: ignore[arg-type]
            raise files.CacheFileError("cache file does not match its metadata (token count)")
        return Conversation(list(tokens), saved.cache, list(boundaries), list(hashes))  # type: ignore[arg-type]

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
            except Exception:  # one bad conversation must not cost the others theirs
                log.exception("not saving %s at shutdown", conv_id)
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
