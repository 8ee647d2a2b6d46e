"""`kmlx-worker`: load a model (or a folder of them) and serve it to gateways over ZeroMQ."""

from __future__ import annotations

import argparse
import logging
import os
import queue
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from protocol.messages import PROTOCOL_VERSION, GoingAway, ModelInfo, ModelsChanged, WorkerInfo

from .config import DEFAULTS
from .distributed.group import GroupBroken, launched_backend
from .distributed.launch import add_distributed_arguments
from .log_format import LOG_FORMATS, adopt_library_loggers, configure_logging
from .vision.options import add_vision_arguments

if TYPE_CHECKING:  # loading MLX is the worker's first real work, not an import side effect
    from .distributed.launch import Rank0, Ranks
    from .model_host import ModelHost
    from .models.loaded import LoadedModel
    from .scheduler import Scheduler
    from .transport import InboxItem, Transport

log = logging.getLogger("kmlx.worker")


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS  # every default comes from worker/config.py
    p = argparse.ArgumentParser(
        prog="kmlx-worker",
        description="Load an MLX model and serve it to kmlx gateways over ZeroMQ.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("-m", "--model", default=None, help="MLX model folder, Hugging Face repo id, .gguf file, or the built-in default")
    m.add_argument("-V", "--vision", action="store_true", default=None, help="force the vision pipeline (otherwise detected)")
    m.add_argument("--weights", default=d.weights, help="weight format: auto (fastest for this backend), q4, float32, bfloat16, float16")
    od = p.add_argument_group("models on demand", "with --models-dir (docs/models.md)")
    od.add_argument("--models-dir", default=None,
                    help="serve every MLX model folder and .gguf file in this folder, each loaded on its first request "
                         "(-m then names the one to load at start)")
    od.add_argument("--max-loaded-models", type=int, default=d.max_loaded_models, help="models in memory at once (0: no limit); "
                    "the least recently used idle one is unloaded to load another")
    od.add_argument("--max-loaded-gb", type=float, default=d.max_loaded_gb,
                    help="memory for loaded models' weights together (default: half of this machine's memory)")
    od.add_argument("--idle-unload-seconds", type=float, default=d.idle_unload_seconds,
                    help="unload a model unused this long (0: never)")
    od.add_argument("--model-load-timeout", type=float, default=d.model_load_timeout,
                    help="seconds a request waits for its model to load before a 503 with Retry-After (the load goes on)")
    n = p.add_argument_group("network")
    n.add_argument("--bind", default=d.bind, help="ZeroMQ endpoint to bind; loopback by default because the port is a trust boundary")
    n.add_argument("--name", default=None, help="worker id shown to gateways (default: host-pid)")
    s = p.add_argument_group("scheduling")
    s.add_argument("--max-running", type=int, default=d.max_running, help="sequences decoded together in one batch")
    s.add_argument("--max-queued", type=int, default=d.max_queued, help="requests waiting for a batch slot before new ones are refused (503)")
    s.add_argument("--prefill-chunk", type=int, default=None,
                   help="prompt tokens prefilled per step, so long prompts don't stall running streams "
                        f"(default: {d.prefill_chunk_gpu} on a GPU, {d.prefill_chunk_cpu} on the CPU backend, where a step is far slower)")
    s.add_argument("--warm-up", choices=["auto", "on", "off"], default=d.warm_up,
                   help="before reporting ready, run the prefill and decode shapes serving uses once, so a GPU backend "
                        "compiles their kernels then and not during the first requests (/health is 503 meanwhile); "
                        "auto: on a GPU only (the CPU backend has nothing to compile)")
    s.add_argument("--default-max-tokens", type=int, default=None, help="completion budget when a request sets none (default: the rest of the context)")
    s.add_argument("--max-tokens-limit", type=int, default=None, help="cap on any one completion; longer requests end with finish_reason=length")
    s.add_argument("--drain-timeout", type=float, default=d.drain_timeout, help="seconds SIGTERM waits for running requests before aborting them")
    s.add_argument("--stall-timeout", type=float, default=d.stall_timeout,
                   help="a compute loop that makes no progress this long is declared stuck: gateways are told at once "
                        "and fail its requests (0: never; see docs/operations.md)")
    g = p.add_argument_group("sampling defaults", "for fields a request leaves out; the model's generation_config.json comes first")
    g.add_argument("--generation-config", choices=("auto", "none"), default=d.generation_config,
                   help="auto: the model's generation_config.json sets sampling defaults (as in vLLM); none: only the flags below")
    g.add_argument("--default-temperature", type=float, default=None, help="temperature when neither request nor model sets one (else 1.0)")
    g.add_argument("--default-top-p", type=float, default=None, help="top_p fallback (else 1.0)")
    g.add_argument("--default-top-k", type=int, default=None, help="top_k fallback (else 0: off)")
    g.add_argument("--default-min-p", type=float, default=None, help="min_p fallback (else 0.0: off)")
    g.add_argument("--default-repetition-penalty", type=float, default=None, help="repetition_penalty fallback (else 1.0: off)")
    g.add_argument("--default-presence-penalty", type=float, default=None, help="presence_penalty fallback (else 0.0)")
    g.add_argument("--default-frequency-penalty", type=float, default=None, help="frequency_penalty fallback (else 0.0)")
    g.add_argument("--chat-template-kwargs", type=_json_object, default=None,
                   help='JSON object of chat-template variables for every request, e.g. \'{"enable_thinking": false}\' '
                        "(a request's chat_template_kwargs override them; variables the template does not read are skipped)")
    g.add_argument("--grammar-cache-size", type=int, default=d.grammar_cache_size,
                   help="compiled grammars kept (response_format schemas, forced tool calls), least recently used dropped first")
    c = p.add_argument_group("prompt caching")
    c.add_argument("--disable-kv-cache", action="store_true", help="no conversation or prefix caching at all")
    c.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=d.enable_prefix_caching,
                   help="keep the system prompt's KV on disk and start new conversations from it")
    c.add_argument("--prompt-cache-dir", default=d.prompt_cache_dir, help="where the system-prefix caches live")
    c.add_argument("--prompt-cache-disk-max-gb", type=float, default=d.prompt_cache_disk_max_gb,
                   help="disk budget for system-prefix caches (least recently used removed first)")
    c.add_argument("--conversation-kv-max-tokens", type=int, default=d.conversation_kv_max_tokens, help="tokens kept per cached entry (clamped to the context)")
    c.add_argument("--conversation-max-convs", type=int, default=d.conversation_max_convs, help="named conversations pinned in the cache (least recently used unpinned first)")
    c.add_argument("--conversation-ttl-seconds", type=float, default=d.conversation_ttl_seconds, help="idle time after which cached KV is dropped")
    c.add_argument("--conversation-max-gb", type=float, default=d.conversation_max_gb,
                   help="memory budget of the prompt cache: every request's cached KV, named conversations included")
    c.add_argument("--conversation-snapshots", type=int, default=d.conversation_snapshots,
                   help="earlier checkpoints pinned per conversation, for caches that cannot be cut (sliding windows, SSM layers)")
    c.add_argument("--kv-bits", type=int, choices=(4, 8), default=None,
                   help="store cached KV quantized to 4 or 8 bits (more cached tokens per GB; running requests stay full precision)")
    c.add_argument("--kv-group-size", type=int, choices=(32, 64, 128), default=d.kv_group_size, help="values per quantization scale with --kv-bits")
    c.add_argument("--conversation-disk-dir", default=d.conversation_disk_dir, help="where saved conversations go")
    c.add_argument("--conversation-disk-max-gb", type=float, default=d.conversation_disk_max_gb, help="disk budget for saved conversations (413 past it)")
    add_distributed_arguments(p)  # --pipeline (docs/distributed.md)
    add_vision_arguments(p)  # --max-image-patches, --video-frames (docs/vision.md)
    o = p.add_argument_group("output")
    o.add_argument("--log-level", default=d.log_level)
    o.add_argument("--log-format", choices=LOG_FORMATS, default=d.log_format,
                   help="text for people; json for one JSON object per line (each request's line carries its request_id)")
    return p


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)

    # Heavy imports only after argument parsing, so --help is instant.
    from .models import ModelLoadError, ensure_fast_blas, load_model

    blas = ensure_fast_blas()  # may re-exec this process with a fast BLAS preloaded
    log.info("linear algebra: %s", blas)
    ranks = _join_group(args)
    if ranks is not None and not ranks.topology.leader:  # no socket: it follows rank 0 (docs/distributed.md)
        from .distributed.follower import run_follower

        raise SystemExit(run_follower(args, ranks))
    # Bind before loading the model: a taken port fails now, not a minute
    # later, and with port 0 the chosen endpoint is known (and logged) at once.
    import zmq

    from .transport import Transport

    models_dir = Path(args.models_dir).expanduser() if args.models_dir else None
    if models_dir is not None and not models_dir.is_dir():
        print(f"kmlx-worker: --models-dir {models_dir} is not a folder", file=sys.stderr)
        raise SystemExit(2)
    if models_dir is not None and ranks is not None:
        print("kmlx-worker: --models-dir is not supported by a distributed worker (serve one model: -m)", file=sys.stderr)
        raise SystemExit(2)
    inbox: queue.Queue[InboxItem] = queue.Queue()
    try:
        transport = Transport(args.bind, inbox)
    except zmq.ZMQError as exc:
        print(f"kmlx-worker: cannot bind {args.bind}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("listening on %s", transport.endpoint)
    loaded = None
    if models_dir is None or args.model:
        t0 = time.perf_counter()
        try:
            spec = args.model if models_dir is None else _model_in_dir(models_dir, args.model)
            loaded = load_model(spec, vision=args.vision, weights=args.weights, split=ranks.split if ranks else None)
        except ModelLoadError as exc:
            print(f"kmlx-worker: {exc}", file=sys.stderr)
            transport.close("model load failed")
            raise SystemExit(2) from None
        log.info(
            "loaded %s (%s weights, context %d) from %s in %.2fs",
            loaded.model_id, loaded.weights, loaded.context_length, loaded.path, time.perf_counter() - t0,
        )
    adopt_library_loggers()
    try:
        serve(args, loaded, transport, inbox, models_dir, ranks)
    except GroupBroken as exc:  # gateways were told (GoingAway); a supervisor restarts the whole group
        log.error("the rank group broke: %s; stopping", exc)
        raise SystemExit(1) from None


def _join_group(args: argparse.Namespace) -> Ranks | None:
    """This process's place in an mlx.distributed group, when mlx.launch started it."""
    backend = launched_backend()
    if backend is None:
        if args.pipeline:
            log.warning("--pipeline has no effect: this worker was not started by mlx.launch")
        return None
    from .distributed.launch import join_ranks

    return join_ranks(backend, pipeline=args.pipeline)


def _model_in_dir(models_dir: Path, model_id: str) -> str:
    from .model_catalog import scan
    from .models import ModelLoadError

    entries = scan(models_dir)
    if model_id not in entries:
        names = ", ".join(sorted(entries)) or "none"
        raise ModelLoadError(f"-m {model_id!r} is not in --models-dir {models_dir} (it has: {names})")
    return str(entries[model_id].path)


def _model_host(args: argparse.Namespace, models_dir: Path | None, wake: Callable[[], None],
                announce: Callable[[list[ModelInfo]], None], rank0: Rank0 | None = None) -> ModelHost:
    from .model_catalog import scan
    from .model_host import ModelHost, ResidencyLimits
    from .model_loader import ModelLoader
    from .model_setup import build_scheduler
    from .models import load_model
    from .models.weights import physical_memory

    def build(loaded: LoadedModel) -> tuple[Scheduler, str]:
        scheduler, token_hash = build_scheduler(args, loaded, per_model_dirs=models_dir is not None, distributed=rank0)
        scheduler.set_wake(wake)  # the prompt (and media) threads wake an idle compute loop when a job is done
        return scheduler, token_hash

    if models_dir is None:
        return ModelHost(build=build, on_change=announce)
    max_gb = args.max_loaded_gb if args.max_loaded_gb is not None else physical_memory() / 2 / 2**30
    limits = ResidencyLimits(
        max_models=args.max_loaded_models,
        max_bytes=int(max_gb * 2**30),
        idle_unload_seconds=args.idle_unload_seconds,
        load_timeout=args.model_load_timeout,
    )
    log.info("models on demand from %s: at most %s model(s), %.1f GiB; idle unload %s", models_dir,
             args.max_loaded_models or "any number of", max_gb,
             f"after {args.idle_unload_seconds:.0f} s" if args.idle_unload_seconds else "off")
    host: ModelHost | None = None

    def load(model_id: str) -> LoadedModel:
        assert host is not None
        loaded = load_model(host.spec(model_id), vision=args.vision, weights=args.weights)
        loaded.model_id = model_id  # the catalog's name (a symlinked folder resolves to another)
        return loaded

    host = ModelHost(build=build, limits=limits, loader=ModelLoader(load, wake), catalog=lambda: scan(models_dir),
                     on_change=announce)
    return host


def _warms_up(setting: str) -> bool:
    import mlx.core as mx

    return setting == "on" or (setting == "auto" and mx.default_device() == mx.gpu)


def serve(args: argparse.Namespace, loaded: LoadedModel | None, transport: Transport, inbox: queue.Queue[InboxItem],
          models_dir: Path | None = None, ranks: Ranks | None = None) -> None:
    # The IO thread must get the GIL quickly when a step's outputs are ready;
    # Python's default 5 ms switch interval would delay every token's send.
    sys.setswitchinterval(0.0005)
    from .engine import Engine
    from .kv.manager import KVConfigError
    from .transport import Wake
    from .watchdog import Watchdog

    worker_id = args.name or f"{socket.gethostname()}-{os.getpid()}"

    def wake() -> None:  # a load finished, or a prompt/media job: wake an idle compute loop
        inbox.put(Wake("job done"))

    def announce(models: list[ModelInfo]) -> None:
        """Tell every gateway; new handshakes get the new list too."""
        if getattr(transport, "info", None) is not None:  # not before the transport serves
            transport.info = msgspec.structs.replace(transport.info, models=models)
            transport.send(None, ModelsChanged(worker_id=worker_id, models=models))

    rank0 = None
    if ranks is not None and loaded is not None:  # rank 0 of a group: the others mirror its batch (docs/distributed.md)
        from .distributed.launch import Rank0

        rank0 = Rank0(ranks, loaded, args)
    host = _model_host(args, models_dir, wake, announce, rank0)
    try:
        default = host.add_loaded(loaded, pinned=models_dir is None) if loaded is not None else None
    except KVConfigError as exc:  # e.g. --kv-group-size that does not divide the head size
        print(f"kmlx-worker: {exc}", file=sys.stderr)
        transport.close("bad configuration")
        # Exit at once: nothing is served or saved yet, and tearing the
        # interpreter down beside a half-built model host crashed (SIGSEGV
        # instead of exit 2) once in a test run.
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(2)
    info = WorkerInfo(
        protocol_version=PROTOCOL_VERSION,
        worker_id=worker_id,
        model_id=default.model_id if default else "",
        created=int(time.time()),
        context_length=default.context_length if default else 0,
        capabilities=default.capabilities if default else ["chat"],
        max_running=args.max_running,
        max_queued=args.max_queued,
        models=host.infos(),
        world_size=ranks.topology.size if ranks else 1,
        distributed_backend=ranks.topology.backend if ranks else "",
    )
    if default is not None and _warms_up(args.warm_up):
        # Before transport.start: no gateway counts this worker ready until it
        # is done. Models loaded on demand later skip it: on the compute thread
        # it would pause the models already serving.
        scheduler = default.scheduler
        log.info("warming up (prefill chunk %d, up to %d sequences)", scheduler.limits.prefill_chunk,
                 scheduler.limits.max_running)
        log.info("warmed up in %.2fs", scheduler.warm_up())
    engine = Engine(host, transport, inbox, on_idle=rank0.idle if rank0 else None,
                    more_stats=rank0.stats if rank0 else None)
    transport.start(info)
    served = info.model_id or f"{len(info.models)} model(s) from {models_dir}"
    log.info("worker %s serving %s on %s", info.worker_id, served, transport.endpoint)

    watchdog = Watchdog(
        engine.progress,
        stop=lambda drain: engine.stop(drain=drain),
        say_going_away=lambda why: transport.send(None, GoingAway(worker_id=info.worker_id, reason=why)),
        close_transport=transport.close,
        on_stall=inbox.put,
        stall_timeout=args.stall_timeout,
        drain_timeout=args.drain_timeout,
    )
    watchdog.install_signals()  # SIGTERM/SIGINT act even when the main thread is stuck in native code
    watchdog.start()
    reason = "shutdown"
    try:
        engine.run()
    except BaseException as exc:  # tell gateways before dying, then re-raise
        reason = f"crashed: {exc!r}"
        raise
    finally:
        watchdog.loop_returned()  # the rest of the shutdown is bounded too
        engine.abort_all()
        if reason == "shutdown":
            host.close()  # saves conversation caches: a restart resumes them (loaded lazily)
        if rank0 is not None:
            rank0.close(reason)  # the other ranks stop with it
        transport.close(reason)
        watchdog.close()
        log.info("worker stopped (%s)", reason)
