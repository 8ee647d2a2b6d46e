"""`load_model`: resolve the spec, load with mlx-lm (text) or mlx-vlm (vision),
then put the weights in the form that runs fast on this backend."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .loaded import LoadedModel
from .progress import log
from .resolve import resolve
from .weights import (
    WEIGHT_CHOICES,
    apply_weights,
    choose_weights,
    convert_weights,
    describe_weights,
    is_float_choice,
    quantized_bits,
)

DEFAULT_CONTEXT_LENGTH = 4096
_CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions", "n_ctx")
# What mlx-lm / mlx-vlm raise for a folder they cannot make sense of.
_LOAD_ERRORS = (FileNotFoundError, ValueError, KeyError, TypeError, ImportError, OSError, RuntimeError)


def load_model(
    spec: str | None, *, vision: bool | None = None, weights: str = "auto", split: Callable[[Any], Any] | None = None
) -> LoadedModel:
    if weights not in WEIGHT_CHOICES:
        raise ModelLoadError(f"unknown weights {weights!r}; choose one of: {', '.join(WEIGHT_CHOICES)}")
    try:
        resolved = resolve(spec)
    except OSError as exc:  # e.g. a read-only cache folder: not a bug, a setting
        where = exc.filename or "the kmlx cache"
        raise ModelLoadError(
            f"cannot prepare model {spec or 'default'}: {where}: {exc.strerror or exc}; "
            "if the cache is not writable, set KMLX_CACHE_DIR to a folder that is"
        ) from exc
    config = read_config(resolved.path)
    is_vision = has_vision(config) if vision is None else bool(vision)
    start = time.perf_counter()
    if is_vision:
        model, tokenizer, processor = _load_vision(resolved.path)
    else:
        model, tokenizer = _load_text(resolved.path)
        processor = None
    if is_vision:
        if split is not None:
            raise ModelLoadError("a vision model cannot be split over several ranks")
        in_memory = apply_weights(model, weights)
    else:
        model, in_memory = _text_weights(model, resolved.path, weights, split)
    if isinstance(tokenizer, _Pending):
        tokenizer = tokenizer.get()
    materialize(model)
    log.debug("loaded %s in %.2f s (weights %s)", resolved.model_id, time.perf_counter() - start, in_memory)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        processor=processor,
        model_id=resolved.model_id,
        path=resolved.path,
        context_length=context_length(config),
        is_vision=is_vision,
        weights=in_memory,
    )


def _text_weights(model: Any, path: Path, weights: str, split: Callable[[Any], Any] | None = None) -> tuple[Any, str]:
    """Convert to the chosen weights, through the derived-weights cache when
    a quantized model is dequantized (the CPU default). ``split`` keeps one
    rank's share of a distributed model before anything is evaluated
    (worker/distributed/model.py); a share is never stored as derived weights."""
    import mlx.core as mx

    from .derived import load_derived, store_derived

    choice = choose_weights(model, weights)
    cacheable = is_float_choice(choice) and bool(quantized_bits(model))
    cached = load_derived(path, choice) if cacheable else None
    if cached is not None:
        model = cached
    else:
        from .gguf_float import exact_float_weights

        convert_weights(model, choice, exact_float_weights(path) if cacheable else None)
    if split is not None:
        split(model)
    mx.eval(model.parameters())
    if cacheable and cached is None and split is None:
        store_derived(path, choice, model)
    return model, describe_weights(model)


def materialize(model: Any) -> None:
    """Evaluate every array the model holds, private ones too (e.g. rope
    frequencies computed at construction): a worker loads models on a thread
    of its own, and MLX evaluates an array only on the thread whose stream
    made it."""
    import mlx.core as mx

    arrays = [
        v for m in model.modules() for v in (*m.values(), *vars(m).values()) if isinstance(v, mx.array)
    ]
    mx.eval(model.parameters(), arrays)


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except OSError as exc:
        raise ModelLoadError(f"cannot read {folder / 'config.json'}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ModelLoadError(f"{folder / 'config.json'} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{folder / 'config.json'} is not a JSON object")
    return config


def has_vision(config: dict[str, Any]) -> bool:
    return isinstance(config.get("vision_config"), dict)


def context_length(config: dict[str, Any]) -> int:
    for section in (config, config.get("text_config") or {}):
        for key in _CONTEXT_KEYS:
            value = section.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return DEFAULT_CONTEXT_LENGTH


def _load_text(path: Path) -> tuple[Any, Any]:
    """mlx-lm's `load`, in its two public halves, with the tokenizer read on a
    thread: it is ~0.6 s of Python that overlaps the weight conversion."""
    try:
        from mlx_lm.utils import load_model, load_tokenizer
    except ImportError as exc:
        raise ModelLoadError(f"mlx-lm is not installed: {exc}") from exc
    try:
        # lazy: weights are materialized once, after the dtype choice, not twice.
        model, config = load_model(path, lazy=True)
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"mlx-lm cannot load {path}: {_short(exc)}") from exc
    result: dict[str, Any] = {}

    def read_tokenizer() -> None:
        try:
            result["tokenizer"] = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
        except BaseException as exc:  # re-raised on the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=read_tokenizer, name="kmlx-tokenizer", daemon=True)
    thread.start()
    return model, _Pending(thread, result, path)


class _Pending:
    """The tokenizer being read; `get()` joins the thread."""

    def __init__(self, thread: threading.Thread, result: dict[str, Any], path: Path) -> None:
        self.thread, self.result, self.path = thread, result, path

    def get(self) -> Any:
        self.thread.join()
        if "error" in self.result:
            exc = self.result["error"]
            if isinstance(exc, _LOAD_ERRORS):
                raise ModelLoadError(f"cannot load the tokenizer of {self.path}: {_short(exc)}") from exc
            raise exc
        return self.result["tokenizer"]


def _load_vision(path: Path) -> tuple[Any, Any, Any]:
    try:
        from mlx_vlm import load
    except ImportError as exc:
        raise ModelLoadError(f"vision models need mlx-vlm: {exc}") from exc
    try:
        model, processor = load(str(path), lazy=True)
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(f"mlx-vlm cannot load {path}: {_short(exc)}") from exc
    return model, _wrap_tokenizer(processor), processor


def _wrap_tokenizer(processor: Any) -> Any:
    """The processor's tokenizer in mlx-lm's TokenizerWrapper, like text models get."""
    tokenizer = getattr(processor, "tokenizer", processor)
    try:
        from mlx_lm.tokenizer_utils import TokenizerWrapper

        return TokenizerWrapper(tokenizer)
    except Exception:  # an unusual processor: the serving code gets it unwrapped
        return tokenizer


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
