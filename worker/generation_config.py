"""Sampling defaults: what a request gets for the fields it leaves out.

Order, per field: the request; the model's own ``generation_config.json``
(as vLLM does; ``--generation-config none`` skips it); the sampling values
the model's authors published where the checkpoint carries none (the
built-in default model); the worker's ``--default-*`` flags; OpenAI's
defaults. The gateway sends unset fields as ``None``, so this is the one
place defaults are decided.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from protocol.messages import SamplingParams

log = logging.getLogger("kmlx.worker.sampling")

# generation_config.json key -> our field (vLLM reads the same keys; do_sample is ignored there too)
_MODEL_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


@dataclass(frozen=True)
class Sampling:
    """Concrete sampling settings for one sequence (nothing left unset)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int | None = None  # None: the scheduler's own default applies
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0


_DEFAULTABLE = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "max_tokens")


@dataclass(frozen=True)
class SamplingDefaults:
    """Per-field defaults and where each came from (logged at start-up)."""

    values: dict[str, Any]
    sources: dict[str, str]

    def resolve(self, params: SamplingParams) -> Sampling:
        chosen = {k: getattr(params, k) for k in _DEFAULTABLE}
        for k, v in chosen.items():
            if v is None and k in self.values:
                chosen[k] = self.values[k]
        base = Sampling()
        concrete = {k: (getattr(base, k) if v is None else v) for k, v in chosen.items()}
        return replace(
            base,
            **concrete,
            logit_bias=dict(params.logit_bias or {}),
            seed=params.seed,
            logprobs=params.logprobs or params.top_logprobs > 0,
            top_logprobs=params.top_logprobs,
        )

    def describe(self) -> str:
        if not self.values:
            return "OpenAI's (temperature 1.0, top_p 1.0)"
        return ", ".join(f"{k} {self.values[k]} ({self.sources[k]})" for k in _DEFAULTABLE if k in self.values)


def read_model_defaults(model_dir: Path) -> dict[str, Any]:
    """The sampling keys of ``generation_config.json`` (empty if absent or unreadable)."""
    path = model_dir / "generation_config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[str, Any] = {}
    for key, name in _MODEL_KEYS.items():
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[name] = int(value) if name in ("top_k", "max_tokens") else float(value)
    return out


def build_defaults(
    model_dir: Path | None,
    *,
    use_model: bool = True,
    published: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
) -> SamplingDefaults:
    """Merge the layers; the first one that sets a field wins."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers = [
        ("generation_config.json", read_model_defaults(model_dir) if (use_model and model_dir) else {}),
        ("published by the model's authors", published or {}),
        ("worker flag", {k: v for k, v in (flags or {}).items() if v is not None}),
    ]
    for source, layer in layers:
        for k, v in layer.items():
            if k not in values:
                values[k], sources[k] = v, source
    return SamplingDefaults(values, sources)


def flag_names() -> list[str]:
    """The fields a ``--default-<name>`` flag may set."""
    return [f.name for f in fields(Sampling) if f.name in _DEFAULTABLE and f.name != "max_tokens"]
