"""`kmlx-gateway`: the OpenAI-compatible HTTP front of a worker pool."""

from __future__ import annotations

import argparse
import logging

from .config import GatewayConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kmlx-gateway",
        description="Serve the OpenAI chat API in front of one or more kmlx workers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=18000)
    p.add_argument("--worker", action="append", dest="workers", metavar="ADDR",
                   help="worker endpoint (repeatable), e.g. tcp://127.0.0.1:5555 (default: that one)")
    p.add_argument("--strip-thinking", action="store_true", help="remove <think> blocks from answers by default")
    p.add_argument("--no-conversation-auto-id", dest="conversation_auto_id", action="store_false",
                   help="don't derive a conversation id from the client address when a request names none")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds a request may run before the worker gives up")
    p.add_argument("--keep-alive", type=float, default=15.0, help="seconds between SSE keep-alive comments while waiting")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds to let running requests finish (new ones get 503) before exiting")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = GatewayConfig(
        workers=args.workers or ["tcp://127.0.0.1:5555"],
        host=args.host,
        port=args.port,
        strip_thinking=args.strip_thinking,
        conversation_auto_id=args.conversation_auto_id,
        request_timeout=args.request_timeout or None,
        keep_alive_seconds=args.keep_alive,
    )
    import uvicorn

    from .app import create_app
    from .server import DrainingServer

    app = create_app(config)
    uv_config = uvicorn.Config(
        app, host=config.host, port=config.port, log_level=args.log_level.lower(), access_log=False,
        timeout_graceful_shutdown=2,  # after our own drain: cut what is left
    )
    DrainingServer(uv_config, app, args.drain_timeout).run()
