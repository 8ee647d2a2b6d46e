"""Per-turn numbers for verbose mode: latency, speed, tokens, cache state."""

from __future__ import annotations

from typing import Any

from client.turn import TurnResult


def cached_tokens(result: TurnResult) -> int | None:
    """OpenAI's name, kamiwaza-mlx's name, then the gateway's header."""
    usage = result.usage
    for key in ("prompt_tokens_details", "input_tokens_details"):
        details = usage.get(key)
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            return int(details["cached_tokens"])
    return result.conv.cached_tokens


def decode_tps(result: TurnResult) -> float | None:
    """The server's decode speed if it reports one; else estimate it from
    the stream (tokens after the first / time after the first)."""
    tps = result.usage.get("tokens_per_second")
    if isinstance(tps, (int, float)) and tps > 0:
        return float(tps)
    n = _int(result.usage, "completion_tokens", "output_tokens")
    if n and n > 1 and result.first_token_at and result.ended and result.streamed:
        span = result.ended - result.first_token_at
        return (n - 1) / span if span > 0 else None
    return None


def stats_fields(result: TurnResult) -> list[tuple[str, str]]:
    """(label, value) pairs; absent numbers are left out rather than faked."""
    fields: list[tuple[str, str]] = []
    if result.streamed and result.ttft is not None:
        fields.append(("ttft", f"{result.ttft:.2f}s"))
    tps = decode_tps(result)
    if tps is not None:
        fields.append(("decode", f"{tps:.1f} tok/s"))
    prompt = _int(result.usage, "prompt_tokens", "input_tokens")
    cached = cached_tokens(result)
    if prompt is not None:
        fields.append(("prompt", f"{prompt}" + (f" (cached {cached})" if cached is not None else "")))
    elif cached is not None:
        fields.append(("cached", str(cached)))
    completion = _int(result.usage, "completion_tokens", "output_tokens")
    if completion is not None:
        fields.append(("completion", str(completion)))
    if result.elapsed is not None:
        fields.append(("time", f"{result.elapsed:.2f}s"))
    if result.conv.kv:
        fields.append(("kv", result.conv.kv))  # X-Conv-KV
    if result.finish_reason and result.finish_reason != "stop":
        fields.append(("finish", result.finish_reason))
    return fields


def format_stats(result: TurnResult) -> str:
    return " · ".join(f"{label} {value}" for label, value in stats_fields(result))


def _int(usage: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = usage.get(key)
        if isinstance(value, (int, float)):
            return int(value)
    return None
