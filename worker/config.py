"""Every worker setting's default, in one place.

``kmlx-worker``'s flags take their defaults from ``WorkerConfig``
(worker/cli.py); the runtime limits (``SchedulerLimits``,
``ConversationLimits``, ``KVConfig``, ``MediaLimits``) default to the same
values, and tests/docs checks that the docs quote them. Imports nothing
heavy: ``kmlx-worker --help`` must not load MLX.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import DEFAULT_WORKER_ENDPOINT

GIB = 1 << 30


@dataclass(frozen=True)
class WorkerConfig:
    # network
    bind: str = DEFAULT_WORKER_ENDPOINT  # loopback: the port is a trust boundary
    # model
    weights: str = "auto"
    # models on demand, with --models-dir (docs/models.md)
    max_loaded_models: int = 0  # models in memory at once (0: no limit)
    max_loaded_gb: float | None = None  # their weights together (None: half of the machine's memory)
    idle_unload_seconds: float = 0.0  # unload a model unused this long (0: never)
    model_load_timeout: float = 300.0  # a request waits this long for its model, then 503 + Retry-After
    # scheduling
    max_running: int = 16  # sequences decoded together
    max_queued: int = 64  # admitted but not yet decoding; more are refused (503)
    prefill_chunk_gpu: int = 512  # prompt tokens per step on a GPU
    prefill_chunk_cpu: int = 128  # ... and on the CPU backend, where a step is far slower
    warm_up: str = "auto"  # run the serving shapes before reporting ready: auto (on a GPU only) | on | off
    drain_timeout: float = 30.0  # SIGTERM: seconds running requests may take to finish
    stall_timeout: float = 60.0  # a compute loop without progress this long is declared stuck (0: never)
    # sampling defaults: the model's generation_config.json ("auto") before the --default-* flags
    generation_config: str = "auto"
    grammar_cache_size: int = 64  # compiled grammars kept (response_format schemas, forced tool calls)
    # prompt caching (docs/prompt-caching.md)
    enable_prefix_caching: bool = True
    prompt_cache_dir: str = "./.cache/mlx_prompt_caches/"
    prompt_cache_disk_max_gb: float = 20.0
    conversation_kv_max_tokens: int = 131072  # per conversation, clamped to the context
    conversation_max_convs: int = 64
    conversation_ttl_seconds: float = 3600.0
    conversation_max_gb: float = 4.0  # all conversations' KV together
    conversation_snapshots: int = 1  # earlier states kept for caches that cannot be rolled back
    conversation_disk_dir: str = "./.cache/kmlx_conversations/"
    conversation_disk_max_gb: float = 200.0
    kv_group_size: int = 64  # values per quantization scale with --kv-bits
    # vision (docs/vision.md)
    max_image_patches: int = 1536  # per image, in 32x32 patches (kamiwaza-mlx's limit)
    video_frames: int = 8  # evenly spaced frames taken from a video
    max_source_megapixels: float = 64.0  # refuse to decode anything bigger (decompression bombs)
    vision_encode_on: str = "auto"
    # output
    log_level: str = "INFO"
    log_format: str = "text"


DEFAULTS = WorkerConfig()
