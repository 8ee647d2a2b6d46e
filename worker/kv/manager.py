"""What the scheduler asks of prompt caching: a plan per request, the
states to keep (checkpoints during prefill, the finished turn), and the
whitelisted conversation-cache control calls.

One prefix tree (``radix.py``) holds every cached token for every request;
conversation ids are named handles into it (``conversations.py``); system
prompts also go to disk (``prefix.py``); saved conversations are files
(``files.py``). Runs on the compute thread (it touches MLX arrays).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.messages import CacheDecision, CacheMode, ChatRequest

from ..config import DEFAULTS, GIB
from . import files
from .conversations import Conversation, ConversationLimits, ConversationStore
from .prefix import PrefixStore
from .radix import Match, PrefixTree
from .segments import Codec, Layout
from .validate import Reference, reference_for
from .views import Cache, cache_length, cache_nbytes

log = logging.getLogger("kmlx.worker.kv")

HOUSEKEEPING_SECONDS = 1.0  # how often idle handles and entries are expired


@dataclass
class KVConfig:
    enabled: bool = True
    prefix_enabled: bool = True
    prefix_dir: Path = Path(DEFAULTS.prompt_cache_dir)
    prefix_disk_max_bytes: int = int(DEFAULTS.prompt_cache_disk_max_gb * GIB)
    disk_dir: Path = Path(DEFAULTS.conversation_disk_dir)
    disk_max_bytes: int = int(DEFAULTS.conversation_disk_max_gb * GIB)
    disk_max_fraction: float = 0.90
    limits: ConversationLimits = field(default_factory=ConversationLimits)
    kv_bits: int | None = None  # store cached rows quantized (--kv-bits)
    kv_group_size: int = DEFAULTS.kv_group_size


@dataclass
class Plan:
    decision: CacheDecision  # what the request is told (X-Conv-* headers)
    cache: Cache | None = None  # the KV to start from
    conversation_id: str | None = None  # the handle a normal finish updates
    system_len: int = 0
    commit: bool = True  # False: this request leaves the cache as it was (reset_conversation)
    checkpoints: list[int] = field(default_factory=list)  # prompt positions to keep the state at during prefill


class KVConfigError(ValueError):
    """A prompt-cache setting this model cannot use (refused at start-up)."""


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
        codec = Codec(config.kv_bits, config.kv_group_size)
        self.tree = PrefixTree(max_bytes=config.limits.max_bytes, codec=codec)
        self.store = ConversationStore(config.limits, self.tree)
        self.prefix = (
            PrefixStore(config.prefix_dir, model_id, max_bytes=config.prefix_disk_max_bytes)
            if config.enabled and config.prefix_enabled else None
        )
        self.reference: Reference | None = None  # this model's cache layout, once bound
        for d in (config.disk_dir, config.prefix_dir):
            files.remove_stale_temporaries(d)  # left by a process killed mid-save
        self.requests = 0  # plans made with the cache on
        self.hits = 0  # ... that reused at least one token
        self.cached_tokens_served = 0
        self._housekept = 0.0

    def bind_model(self, model: Any) -> None:
        """Learn the model's cache layout (every loaded file is checked
        against it; checkpoints are taken where it has state layers), then
        list the system prompts cached on disk."""
        try:
            self.reference = reference_for(model)
        except Exception as exc:  # an exotic model: files are still checked for consistency
            log.warning("could not derive the model's cache layout (%s); loaded caches get structural checks only", exc)
        if self.reference is not None:
            layout = Layout(tuple(layer.kind == "KVCache" for layer in self.reference.layers))
            dtypes = [layer.arrays[0][0] for layer in self.reference.layers if layer.kind == "KVCache" and layer.arrays]
            self.tree.bind(layout, dtypes[0] if dtypes else None)
            bits, group = self.config.kv_bits, self.config.kv_group_size
            dims = {layer.arrays[0][1][-1] for layer in self.reference.layers if layer.kind == "KVCache" and layer.arrays}
            if bits is not None and any(d % group for d in dims):
                raise KVConfigError(f"--kv-group-size {group} does not divide this model's head size {sorted(dims)}")
        if self.prefix is not None:
            self.prefix.scan()

    @property
    def needs_checkpoints(self) -> bool:
        """The model has layers that cannot be cut (docs/prompt-caching.md)."""
        return self.tree.needs_checkpoints

    # ------------------------------------------------------------------ #
    def plan(self, req: ChatRequest, prompt: list[int], system_len: int, last_message_end: int = 0) -> Plan:
        """What this request can reuse. Raises ControlError (4xx naming the
        conversation) when its saved cache is damaged: that request alone
        fails, and the file is quarantined so the next one starts fresh."""
        n = len(prompt)
        if not self.config.enabled or req.reset_conversation:
            return Plan(CacheDecision("disabled", 0, n), commit=False)
        conv_id = req.conversation_id
        conv: Conversation | None = None
        if conv_id is not None:
            conv = self.store.get(conv_id)
            if conv is None:
                conv = self._load_saved(conv_id)
            self.store.touch(conv_id)
        self._housekeeping()
        match = self.tree.lookup(prompt, n - 1)
        if self.prefix is not None and match.usable < system_len < n and self._load_prefix(prompt[:system_len]):
            match = self.tree.lookup(prompt, n - 1, record=False)
        cached = match.usable
        decision = CacheDecision(self._mode(conv_id, conv, match), cached, n - cached)
        stops = sorted({b for b in (system_len, last_message_end) if cached < b < n - 1}) if self.needs_checkpoints else []
        self.requests += 1
        if cached:
            self.hits += 1
            self.cached_tokens_served += cached
        return Plan(decision, self.tree.cache_for(match), conv_id, system_len, checkpoints=stops)

    def reusable(self, prompt: list[int]) -> int:
        """Prompt tokens the cache could supply now (nothing is counted)."""
        return self.tree.lookup(prompt, len(prompt) - 1, record=False).usable

    @staticmethod
    def _mode(conv_id: str | None, conv: Conversation | None, match: Match) -> CacheMode:
        """The X-Conv-KV value (docs/prompt-caching.md has the table)."""
        if conv_id is not None and conv is None:
            return "fresh"
        if not match.usable:
            return "none" if conv_id is None else "reset"
        # A checkpoint short of where the prompt diverges: the state there cannot be rebuilt.
        return "snapshot" if match.usable < match.matched else "hit"

    def checkpoint(self, plan: Plan, tokens: list[int], cache: Cache) -> None:
        """The state at a message boundary, taken during prefill."""
        if plan.commit:
            self.offer(tokens, cache)

    def offer(self, tokens: list[int], cache: Cache) -> None:
        """Store a running sequence's state (its prefix is wanted by another
        request, or it is a checkpoint)."""
        if len(tokens) <= self.config.limits.max_tokens and cache_length(cache) in (None, len(tokens)):
            self.tree.insert(tokens, cache)

    def finish(self, plan: Plan, tokens: list[int] | None, cache: Cache | None, *, hashes: list[str], boundaries: list[int]) -> None:
        """Called for every request once; stores only a normal finish."""
        if tokens is None or cache is None or not plan.commit:
            return  # aborted, failed or asked not to: the cache stays as it was
        if cache_length(cache) not in (None, len(tokens)):
            return  # never store a cache whose tokens we can't vouch for
        cap = self.config.limits.max_tokens
        if len(tokens) > cap and self.needs_checkpoints:
            node = None  # cannot be cut to the cap
        else:
            tokens = tokens[:cap]
            node = self.tree.insert(tokens, cache, pin=plan.conversation_id is not None)
        if plan.conversation_id is not None:
            if node is not None:
                kept = [b for b in boundaries if b <= len(tokens)]
                self.store.commit(plan.conversation_id, tokens, node, kept, hashes[: len(kept)] if len(kept) < len(boundaries) else hashes)
            else:
                self.store.drop(plan.conversation_id)
        if self.prefix is not None and 0 < plan.system_len <= len(tokens):
            self._offer_prefix(tokens[: plan.system_len])

    # ------------------------------------------------------------------ #
    def _load_prefix(self, tokens: list[int]) -> bool:
        assert self.prefix is not None
        cache = self.prefix.find(tokens, self.reference)
        return cache is not None and self.tree.insert(tokens, cache) is not None

    def _offer_prefix(self, tokens: list[int]) -> None:
        assert self.prefix is not None
        if self.prefix.has(tokens):
            return
        cache = self.tree.cache_of(tokens)
        if cache is not None:
            self.prefix.save(tokens, cache)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._housekept < HOUSEKEEPING_SECONDS:
            return
        self._housekept = now
        self.store.expire()
        self.tree.expire(now - self.config.limits.ttl_seconds)

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
        cache = self.tree.cache_of(conv.tokens) if conv is not None else None
        if conv is None or cache is None:
            raise ControlError(f"conversation {conv_id!r} has no cache in memory", 404, "conversation_not_found")
        d = self.config.disk_dir
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        estimate = cache_nbytes(cache)
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
            path, size = files.save_cache(d, stem, cache, meta)
        except OSError as exc:  # the partial files are gone already (files.temporary_file)
            if files.is_disk_full(exc):
                raise ControlError(f"the disk is full; conversation {conv_id!r} was not saved", 507, "disk_full") from None
            raise ControlError(f"could not save conversation {conv_id!r}: {exc.strerror or exc}", 507, "disk_error") from None
        # The file name, not the server's absolute path (clients need no more).
        return {"status": "saved", "id": conv_id, "path": path.name, "bytes": size, "tokens": len(conv.tokens)}

    def load(self, args: dict[str, Any]) -> dict[str, Any]:
        conv_id, _stem = self._stem(args)
        conv = self._load_saved(conv_id, strict=True)
        if conv is None:
            raise ControlError(f"nothing saved for conversation {conv_id!r}", 404, "conversation_not_found")
        return {"status": "loaded", "id": conv_id, "tokens": len(conv.tokens)}

    def _load_saved(self, conv_id: str, *, strict: bool = False) -> Conversation | None:
        """Adopt a saved conversation into the tree. A damaged file is
        quarantined and raises ControlError; another model's file is refused
        (``strict``) or ignored (a chat turn then starts fresh)."""
        d, stem = self.config.disk_dir, files.safe_name(conv_id)
        try:
            saved = files.load_cache(
                d, stem, model_id=self.model_id, tokenizer_hash=self.tokenizer_hash,
                reference=self.reference, max_bytes=self.config.limits.max_bytes + (16 << 20),
            )
            record = None if saved is None else self._record(saved)
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
        if record is None or saved is None:
            return None
        tokens, boundaries, hashes = record
        node = self.tree.insert(tokens, saved.cache, pin=True)
        if node is None:
            if strict:
                raise ControlError(f"conversation {conv_id!r} does not fit the prompt-cache memory budget", 413, "memory_budget_exceeded")
            return None
        return self.store.commit(conv_id, tokens, node, boundaries, hashes)

    def _record(self, saved: files.SavedCache) -> tuple[list[int], list[int], list[str]]:
        """The sidecar's record, checked against the cache it describes."""
        m = saved.meta
        tokens, boundaries, hashes = m.get("tokens"), m.get("boundaries", []), m.get("hashes", [])
        vocab = self.reference.vocab_size if self.reference is not None else None
        ok = (
            isinstance(tokens, list) and len(tokens) > 0
            and all(type(t) is int and t >= 0 and (vocab is None or t < vocab) for t in tokens)
            and isinstance(boundaries, list) and all(type(b) is int for b in boundaries)
            and isinstance(hashes, list) and all(isinstance(h, str) for h in hashes)
        )
        if not ok:
            raise files.CacheFileError("cache metadata has malformed tokens, boundaries or hashes")
        if cache_length(saved.cache) not in (None, len(tokens)):  # type: ignore[arg-type]
            raise files.CacheFileError("cache file does not match its metadata (token count)")
        return list(tokens), list(boundaries), list(hashes)  # type: ignore[arg-type]

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
        memory = [{"id": cid, "tokens": len(c.tokens), "bytes": c.nbytes} for cid, c in self.store.items() if c.in_memory]
        return {"items": items, "in_memory": memory}

    def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        conv_id, stem = self._stem(args)
        found = files.delete_cache(self.config.disk_dir, stem)
        conv = self.store.drop(conv_id)
        if conv is not None:
            found = True
            if conv.node is not None:
                self.tree.drop_path(conv.node)  # its own KV; prefixes other entries share stay
        return {"status": "deleted" if found else "not_found", "id": conv_id}

    def save_all(self) -> int:
        """On shutdown: persist every conversation so a restart resumes them."""
        saved = 0
        for conv_id, conv in self.store.items():
            if not conv.in_memory:
                continue
            try:
                self.save({"conversation_id": conv_id, "title": "saved at shutdown"})
                saved += 1
            except ControlError as exc:
                log.warning("not saving %s at shutdown: %s", conv_id, exc)
            except Exception:  # one bad conversation must not cost the others theirs
                log.exception("not saving %s at shutdown", conv_id)
        return saved

    def summary(self) -> dict[str, Any]:
        t = self.tree
        return {
            "enabled": self.config.enabled,
            "requests": self.requests,
            "hits": self.hits,
            "hit_rate": round(self.hits / self.requests, 4) if self.requests else 0.0,
            "cached_tokens_served": self.cached_tokens_served,
            "prompt_tokens_queried": t.stats.tokens_queried,
            "cache_tokens": t.tokens,
            "cache_bytes": t.nbytes,
            "cache_budget_bytes": t.max_bytes,
            "cache_nodes": t.nodes,
            "evictions": t.stats.evictions,
            "evicted_bytes": t.stats.evicted_bytes,
            "kv_storage": f"{self.config.kv_bits}-bit" if self.config.kv_bits else "full precision",
            "conversations": len(self.store),
            "conversation_tokens": self.store.tokens,
            "conversation_bytes": sum(c.nbytes for _, c in self.store.items()),
            "prefix_files": self.prefix.files if self.prefix else 0,
            "prefix_saves": self.prefix.saves if self.prefix else 0,
            "prefix_loads": self.prefix.loads if self.prefix else 0,
        }
