"""`kmlx-worker`: load a model and serve it to gateways over ZeroMQ."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time

from protocol.messages import PROTOCOL_VERSION, WorkerInfo

from .log_format import LOG_FORMATS, adopt_library_loggers, configure_logging

DEFAULT_BIND = "tcp://127.0.0.1:5555"
log = logging.getLogger("kmlx.worker")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kmlx-worker",
        description="Load an MLX model and serve it to kmlx gateways over ZeroMQ.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("-m", "--model", default=None, help="MLX model folder, Hugging Face repo id, .gguf file, or the built-in default")
    m.add_argument("-V", "--vision", action="store_true", default=None, help="force the vision pipeline (otherwise detected)")
    m.add_argument("--weights", default="auto", help="weight format: auto (fastest for this backend), q4, float32, bfloat16, float16")
    n = p.add_argument_group("network")
    n.add_argument("--bind", default=DEFAULT_BIND, help="ZeroMQ endpoint to bind; loopback by default because the port is a trust boundary")
    n.add_argument("--name", default=None, help="worker id shown to gateways (default: host-pid)")
    s = p.add_argument_group("scheduling")
    s.add_argument("--max-running", type=int, default=16, help="sequences decoded together in one batch")
    s.add_argument("--max-queued", type=int, default=64, help="requests waiting for a batch slot before new ones are refused (503)")
    s.add_argument("--prefill-chunk", type=int, default=512, help="prompt tokens prefilled per step, so long prompts don't stall running streams")
    s.add_argument("--default-max-tokens", type=int, default=None, help="completion budget when a request sets none (default: the rest of the context)")
    s.add_argument("--max-tokens-limit", type=int, default=None, help="cap on any one completion; longer requests end with finish_reason=length")
    s.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for running requests before aborting them")
    o = p.add_argument_group("output")
    o.add_argument("--log-level", default="INFO")
    o.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="text for people; json for one JSON object per line (each request's line carries its request_id)")
    return p


def _tokenizer_hash(tokenizer) -> str:
    h = hashlib.sha256()
    h.update(str(len(tokenizer.get_vocab())).encode())
    h.update((getattr(tokenizer, "chat_template", None) or "").encode())
    h.update(repr(sorted(tokenizer.eos_token_ids)).encode())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)

    # Heavy imports only after argument parsing, so --help is instant.
    from .models import ModelLoadError, ensure_fast_blas, load_model

    blas = ensure_fast_blas()  # may re-exec this process with a fast BLAS preloaded
    log.info("linear algebra: %s", blas)
    t0 = time.perf_counter()
    try:
        loaded = load_model(args.model, vision=args.vision, weights=args.weights)
    except ModelLoadError as exc:
        print(f"kmlx-worker: {exc}", file=sys.stderr)
        raise SystemExit(2)
    adopt_library_loggers()
    log.info(
        "loaded %s (%s weights, context %d) from %s in %.2fs",
        loaded.model_id, loaded.weights, loaded.context_length, loaded.path, time.perf_counter() - t0,
    )
    serve(args, loaded)


def serve(args: argparse.Namespace, loaded) -> None:
    from .engine import Engine
    from .scheduler import Scheduler, SchedulerLimits
    from .transport import Transport

    limits = SchedulerLimits(
        max_running=args.max_running,
        max_waiting=args.max_queued,
        prefill_chunk=args.prefill_chunk,
        default_max_tokens=args.default_max_tokens,
        max_tokens_limit=args.max_tokens_limit,
    )
    scheduler = Scheduler(
        loaded.model, loaded.tokenizer, model_id=loaded.model_id, context_length=loaded.context_length, limits=limits
    )
    info = WorkerInfo(
        protocol_version=PROTOCOL_VERSION,
        worker_id=args.name or f"{socket.gethostname()}-{os.getpid()}",
        model_id=loaded.model_id,
        created=int(time.time()),
        context_length=loaded.context_length,
        capabilities=["chat"] + (["vision"] if loaded.is_vision else []),
        tokenizer_hash=_tokenizer_hash(loaded.tokenizer),
        max_running=args.max_running,
        max_queued=args.max_queued,
    )
    inbox: queue.Queue = queue.Queue()
    transport = Transport(args.bind, info, inbox)
    engine = Engine(scheduler, transport, inbox)
    transport.start()
    log.info("worker %s serving %s on %s", info.worker_id, info.model_id, transport.endpoint)

    def on_signal(signum: int, _frame) -> None:
        if engine.draining or signum == signal.SIGINT:
            log.info("stopping now")
            engine.stop(drain=False)
            return
        log.info("draining (up to %.0fs)", args.drain_timeout)
        engine.stop(drain=True)
        timer = threading.Timer(args.drain_timeout, lambda: engine.stop(drain=False))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reason = "shutdown"
    try:
        engine.run()
    except BaseException as exc:  # tell gateways before dying, then re-raise
        reason = f"crashed: {exc!r}"
        raise
    finally:
        engine.abort_all()
        transport.close(reason)
        log.info("worker stopped (%s)", reason)
