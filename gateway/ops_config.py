"""Operations settings of the gateway: access control, request limits, logs.

Kept apart from ``config.py`` (serving and pool settings) with their own
flags, so the two sets can change independently. ``GatewayConfig.ops``
carries one of these.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from .logging_setup import LOG_FORMATS

MIB = 1024 * 1024
API_KEY_ENV = "KMLX_API_KEY"


@dataclass
class OpsConfig:
    # Access: an empty list means no authentication (a loopback-only default).
    api_keys: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)  # empty: no CORS headers at all
    # Limits on what one request may carry; 0 disables a limit.
    max_body_bytes: int = 32 * MIB
    max_messages: int = 1024
    max_images: int = 16
    max_image_bytes: int = 20 * MIB  # decoded size of one data-URL image
    # Logs.
    log_format: str = "text"
    trace_requests_path: str | None = None  # JSONL with prompts and answers; opt-in only


def add_ops_arguments(p: argparse.ArgumentParser) -> None:
    d = OpsConfig()  # every default comes from here
    a = p.add_argument_group("access and limits (docs/operations.md)")
    a.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on every endpoint but /health and /metrics "
                        f"(repeatable, for key rotation; env {API_KEY_ENV} also works and keeps the key out of `ps`)")
    a.add_argument("--cors-origin", action="append", dest="cors_origins", metavar="ORIGIN",
                   help="allow browser requests from this origin (repeatable; '*' for any). Default: CORS off")
    a.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / MIB, help="largest request body accepted (413 above); 0: no limit")
    a.add_argument("--max-messages", type=int, default=d.max_messages, help="most messages in one chat request; 0: no limit")
    a.add_argument("--max-images", type=int, default=d.max_images, help="most images and videos in one chat request; 0: no limit")
    a.add_argument("--max-image-mb", type=float, default=d.max_image_bytes / MIB,
                   help="largest decoded data-URL image or video (413 above); 0: no limit")
    g = p.add_argument_group("logs (docs/operations.md)")
    g.add_argument("--log-format", choices=LOG_FORMATS, default=d.log_format,
                   help="text for people; json for one JSON object per line (log shippers)")
    g.add_argument("--trace-requests-path", metavar="FILE", default=d.trace_requests_path,
                   help="append every request's messages and answer to this JSONL file (contains prompt text; off by default)")


def ops_config_from_args(args: argparse.Namespace) -> OpsConfig:
    keys = [k for k in (args.api_keys or []) if k]
    env_key = os.environ.get(API_KEY_ENV, "")
    if env_key and env_key not in keys:
        keys.append(env_key)
    return OpsConfig(
        api_keys=keys,
        cors_origins=list(args.cors_origins or []),
        max_body_bytes=max(0, int(args.max_body_mb * MIB)),
        max_messages=max(0, args.max_messages),
        max_images=max(0, args.max_images),
        max_image_bytes=max(0, int(args.max_image_mb * MIB)),
        log_format=args.log_format,
        trace_requests_path=args.trace_requests_path,
    )
