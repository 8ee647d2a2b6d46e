"""`kmlx-gateway`: the OpenAI-compatible HTTP front of a worker pool."""

from __future__ import annotations

import argparse

from .config import DEFAULT_WORKER, GatewayConfig, WorkersFileError, WorkerSpec, load_workers_file
from .logging_setup import configure_logging
from .media import add_media_arguments, media_config_from_args
from .ops_config import add_ops_arguments, ops_config_from_args
from .response_store import add_response_store_arguments, response_store_config_from_args


def build_parser() -> argparse.ArgumentParser:
    d = GatewayConfig()  # every default comes from here
    p = argparse.ArgumentParser(
        prog="kmlx-gateway",
        description="Serve the OpenAI (chat, responses, completions) and Anthropic (messages) APIs in front of one or more kmlx workers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--worker", action="append", dest="workers", metavar="ADDR",
                   help=f"worker endpoint (repeatable), e.g. {DEFAULT_WORKER} (default: that one)")
    p.add_argument("--workers-file", metavar="PATH",
                   help="pool members with optional per-worker queue limits, TOML or JSON (see docs/pool.md); adds to --worker")
    # -- pool: backpressure, routing, health (docs/pool.md) --
    p.add_argument("--max-queued-requests", type=int, default=d.max_queued_requests,
                   help="per worker: requests waiting for a batch slot before this gateway answers 503 (0: the worker's --max-queued)")
    p.add_argument("--max-queued-tokens", type=int, default=d.max_queued_tokens,
                   help="per worker: prompt tokens waiting to be prefilled before this gateway answers 503 (0: no limit)")
    p.add_argument("--spill-factor", type=float, default=d.spill_factor,
                   help="a conversation moves off its worker only when that worker's load exceeds this multiple of the mean (and its batch is full)")
    p.add_argument("--ping-interval", type=float, default=d.ping_interval, help="seconds between liveness pings to each worker")
    p.add_argument("--ping-timeout", type=float, default=d.ping_timeout,
                   help="a worker silent this long (no ping answer, no output) is marked down")
    # -- end pool --
    p.add_argument("--strip-thinking", action="store_true", help="remove <think> blocks from answers by default")
    p.add_argument("--no-conversation-auto-id", dest="conversation_auto_id", action="store_false",
                   help="don't derive a conversation id from the client address when a request names none")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout,
                   help="seconds a request may run before the worker gives up (0: no limit)")
    p.add_argument("--keep-alive", type=float, default=d.keep_alive_seconds, help="seconds between SSE keep-alive comments while waiting")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout,
                   help="on SIGTERM, seconds to let running requests finish (new ones get 503) before exiting")
    p.add_argument("--log-level", default=d.log_level)
    add_ops_arguments(p)  # access, limits, log format, tracing (docs/operations.md)
    add_media_arguments(p)  # local media directories, fetch timeout (docs/vision.md)
    add_response_store_arguments(p)  # stored /v1/responses (docs/apis.md)
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    specs: list[WorkerSpec] = []
    if args.workers_file:
        try:
            specs = load_workers_file(args.workers_file) + [WorkerSpec(a) for a in args.workers or []]
        except WorkersFileError as exc:
            parser.error(str(exc))
    if args.spill_factor < 1.0:
        parser.error("--spill-factor must be at least 1.0")
    config = GatewayConfig(
        workers=args.workers or [DEFAULT_WORKER],
        worker_specs=specs,
        max_queued_requests=max(0, args.max_queued_requests),
        max_queued_tokens=max(0, args.max_queued_tokens),
        spill_factor=args.spill_factor,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        host=args.host,
        port=args.port,
        strip_thinking=args.strip_thinking,
        conversation_auto_id=args.conversation_auto_id,
        request_timeout=args.request_timeout or None,
        keep_alive_seconds=args.keep_alive,
        drain_timeout=args.drain_timeout,
        log_level=args.log_level,
        ops=ops_config_from_args(args),
        media=media_config_from_args(args),
        responses=response_store_config_from_args(args),
    )
    import uvicorn

    from .app import create_app
    from .server import DrainingServer

    app = create_app(config)
    uv_config = uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.log_level.lower(), access_log=False,
        timeout_graceful_shutdown=2,  # after our own drain: cut what is left
        log_config=None,  # uvicorn's loggers go through ours (one format, JSON included)
    )
    DrainingServer(uv_config, app, config.drain_timeout).run()
