"""What a loaded model needs to serve: its scheduler, prompt cache and sampling defaults.

One function, `build_scheduler`, used for the `-m` model at start and for
every model a `--models-dir` worker loads later (on the compute thread).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("kmlx.worker")


def build_scheduler(args: argparse.Namespace, loaded: Any, *, per_model_dirs: bool = False, distributed: Any = None) -> tuple[Any, str]:
    """(scheduler, tokenizer hash) for `loaded`. per_model_dirs: keep its
    caches on disk in folders of its own (several models share one worker).
    distributed: a rank 0's ``Rank0``, whose model and mirrored batch the
    scheduler drives (worker/distributed/launch.py)."""
    from .batch import Batch
    from .scheduler import Scheduler, SchedulerLimits
    from .vision.options import vision_scheduler

    limits = SchedulerLimits(
        max_running=args.max_running,
        max_queued=args.max_queued,
        prefill_chunk=args.prefill_chunk or default_prefill_chunk(),
        default_max_tokens=args.default_max_tokens,
        max_tokens_limit=args.max_tokens_limit,
    )
    token_hash = tokenizer_hash(loaded.tokenizer)
    scheduler_cls = Scheduler
    if loaded.is_vision:  # images/video beside text in the same batch (docs/vision.md)
        scheduler_cls = vision_scheduler(loaded, args)
    model, batch = loaded.model, Batch
    if distributed is not None:
        model, batch = distributed.start(token_hash, limits)
    scheduler = scheduler_cls(
        model,
        loaded.tokenizer,
        model_id=loaded.model_id,
        context_length=loaded.context_length,
        limits=limits,
        batch=batch,
        kv=kv_manager(args, loaded, token_hash, per_model_dirs=per_model_dirs) if distributed is None else None,
        sampling_defaults=sampling_defaults(args, loaded),
        template_defaults=args.chat_template_kwargs,
        grammar_cache_size=args.grammar_cache_size,
    )
    return scheduler, token_hash


def tokenizer_hash(tokenizer: Any) -> str:
    h = hashlib.sha256()
    h.update(str(len(tokenizer.get_vocab())).encode())
    h.update((getattr(tokenizer, "chat_template", None) or "").encode())
    h.update(repr(sorted(tokenizer.eos_token_ids)).encode())
    return h.hexdigest()[:16]


def default_prefill_chunk() -> int:
    import mlx.core as mx

    from .config import DEFAULTS

    return DEFAULTS.prefill_chunk_gpu if mx.default_device() == mx.gpu else DEFAULTS.prefill_chunk_cpu


def kv_manager(args: argparse.Namespace, loaded: Any, token_hash: str, *, per_model_dirs: bool = False) -> Any:
    from .kv.conversations import ConversationLimits
    from .kv.files import safe_name
    from .kv.manager import KVConfig, PromptCacheManager

    if args.disable_kv_cache:
        return None
    limits = ConversationLimits(
        max_tokens=min(args.conversation_kv_max_tokens, loaded.context_length),
        max_conversations=args.conversation_max_convs,
        ttl_seconds=args.conversation_ttl_seconds,
        max_bytes=int(args.conversation_max_gb * (1 << 30)),
        snapshots=args.conversation_snapshots,
    )
    prefix_dir, disk_dir = Path(args.prompt_cache_dir), Path(args.conversation_disk_dir)
    if per_model_dirs:  # the same conversation id may be used with two models
        prefix_dir, disk_dir = prefix_dir / safe_name(loaded.model_id), disk_dir / safe_name(loaded.model_id)
    config = KVConfig(
        enabled=True,
        prefix_enabled=args.enable_prefix_caching,
        prefix_dir=prefix_dir,
        prefix_disk_max_bytes=int(args.prompt_cache_disk_max_gb * (1 << 30)),
        kv_bits=args.kv_bits,
        kv_group_size=args.kv_group_size,
        disk_dir=disk_dir,
        disk_max_bytes=int(args.conversation_disk_max_gb * (1 << 30)),
        limits=limits,
    )
    return PromptCacheManager(config, model_id=loaded.model_id, tokenizer_hash=token_hash)


def sampling_defaults(args: argparse.Namespace, loaded: Any) -> Any:
    from .generation_config import build_defaults, flag_names
    from .models.default import published_sampling

    defaults = build_defaults(
        loaded.path,
        use_model=args.generation_config == "auto",
        published=published_sampling(loaded.path),
        flags={name: getattr(args, f"default_{name}") for name in flag_names()},
    )
    log.info("%s: sampling defaults: %s", loaded.model_id, defaults.describe())
    return defaults
