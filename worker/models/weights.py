"""Choose the in-memory form of a model's weights for the backend in use.

Measured on the MLX CPU backend (2 cores, SmolLM2-135M, see docs/models.md):
quantized matmuls have no fast CPU kernels (Q4 prefill 7.6 tok/s), dequantized
float32 goes through BLAS (64 tok/s with OpenBLAS), bfloat16 sits between and
float16 is unusably slow. On Metal/CUDA the quantized kernels are fast and use
less memory, so the stored form is kept there.
"""

from __future__ import annotations

import os
import threading
from typing import Any, cast

from .errors import ModelLoadError
from .progress import say

WEIGHT_CHOICES = ("auto", "native", "float32", "bfloat16", "float16", "q4", "q8")
_FLOATS = {"float32", "bfloat16", "float16"}
# Dequantizing to float32 multiplies a Q4 model's size by ~7; "auto" only does
# it while the result stays below this share of the machine's memory.
_AUTO_MEMORY_SHARE = 0.5


def apply_weights(model: Any, choice: str) -> str:
    """Convert `model` in place to `choice`; return what is now in memory ("float32", "q4+q8", ...)."""
    import mlx.core as mx

    convert_weights(model, choose_weights(model, choice))
    mx.eval(model.parameters())
    return describe_weights(model)


def choose_weights(model: Any, choice: str) -> str:
    """`choice` with "auto" made concrete for this backend and this model."""
    if choice not in WEIGHT_CHOICES:
        raise ModelLoadError(f"unknown weights {choice!r}; choose one of: {', '.join(WEIGHT_CHOICES)}")
    return _auto_choice(model) if choice == "auto" else choice


def is_float_choice(choice: str) -> bool:
    return choice in _FLOATS


def convert_weights(model: Any, choice: str, exact: dict[str, Any] | None = None) -> None:
    """Convert in place (lazily: nothing is computed until evaluated).

    exact: float32 weights to use for some quantized layers instead of
    dequantizing their MLX form (a GGUF's own values, see gguf_float).
    """
    import mlx.core as mx

    if choice in _FLOATS:
        if choice == "float16" and mx.default_device() == mx.cpu:
            say("warning: float16 weights are extremely slow on the MLX CPU backend")
        dequantize(model, exact)
        model.set_dtype(getattr(mx, choice))
    elif choice in ("q4", "q8"):
        bits = 4 if choice == "q4" else 8
        if set(quantized_bits(model).values()) != {bits}:
            dequantize(model)
            model.set_dtype(mx.float32)
            quantize(model, bits)


def _auto_choice(model: Any) -> str:
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        return "native"
    need = float32_bytes(model)
    have = physical_memory()
    if have and need > _AUTO_MEMORY_SHARE * have:
        say(f"keeping stored weights: float32 would need {need / 2**30:.1f} GiB of {have / 2**30:.1f} GiB")
        return "native"
    return "float32"


def dequantize(model: Any, exact: dict[str, Any] | None = None) -> None:
    """Replace quantized layers by float32 ones (scales upcast first), taking a
    layer's weight from `exact` (name -> float32 array) where it has one."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_unflatten

    # MLX runs each CPU stream on its own thread: spreading the layers over a
    # few streams roughly halves the time to dequantize on 2 cores.
    streams = _cpu_streams()
    replaced: list[tuple[str, Any]] = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            continue
        s = streams[len(replaced) % len(streams)]
        biases = m.get("biases")
        w = (exact or {}).get(name)
        if w is None:
            w = mx.dequantize(
                m.weight,
                m.scales.astype(mx.float32, stream=s),
                None if biases is None else biases.astype(mx.float32, stream=s),
                group_size=m.group_size,
                bits=m.bits,
                mode=getattr(m, "mode", "affine"),
                stream=s,
            )
        if isinstance(m, nn.QuantizedLinear):
            new: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m)
            if "bias" in m:
                new.bias = m.bias
        else:
            new = nn.Embedding(w.shape[0], w.shape[1])
        new.weight = w
        replaced.append((name, new))
    if replaced:
        model.update_modules(tree_unflatten(replaced))
    if quantized_bits(model):  # other kinds (e.g. mixture-of-experts layers)
        from mlx_lm.utils import dequantize_model

        dequantize_model(model)


_streams = threading.local()


def _cpu_streams() -> list[Any]:
    """A few CPU streams, made once per thread: MLX keeps every stream for the
    process's life, and a stream can only be used on the thread that made it
    (a worker loads models on a thread of its own)."""
    import mlx.core as mx

    if not hasattr(_streams, "cpu"):
        _streams.cpu = [mx.new_stream(mx.cpu) for _ in range(max(1, min(os.cpu_count() or 1, 4)))]
    return _streams.cpu


def quantize(model: Any, bits: int, group_size: int = 32) -> None:
    import mlx.nn as nn

    def wanted(_path: str, m: Any) -> bool:
        return hasattr(m, "to_quantized") and m.weight.shape[-1] % group_size == 0

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=wanted)


def quantized_bits(model: Any) -> dict[str, int]:
    return {name: m.bits for name, m in model.named_modules() if hasattr(m, "bits") and hasattr(m, "scales")}


def _leaves(model: Any) -> list[tuple[str, Any]]:
    """(dotted name, array) for every parameter of ``model``."""
    from mlx.utils import tree_flatten

    return cast("list[tuple[str, Any]]", tree_flatten(model.parameters()))


def weights_bytes(model: Any) -> int:
    """Bytes of the model's parameters as they are in memory."""
    return sum(value.nbytes for _, value in _leaves(model))


def float32_bytes(model: Any) -> int:
    bits = quantized_bits(model)
    total = 0
    for key, value in _leaves(model):
        layer, _, leaf = key.rpartition(".")
        if layer in bits and leaf == "weight":
            total += value.size * (32 // bits[layer]) * 4
        elif layer not in bits:
            total += value.size * 4
    return total


def describe_weights(model: Any) -> str:
    """"float32", "bfloat16", "q4", "q4+q8" (mixed bits), ..."""
    bits = sorted(set(quantized_bits(model).values()))
    if bits:
        return "+".join(f"q{b}" for b in bits)
    counts: dict[str, int] = {}
    for _, value in _leaves(model):
        name = str(value.dtype).rpartition(".")[-1]
        counts[name] = counts.get(name, 0) + value.size
    return max(counts, key=lambda k: counts[k]) if counts else "empty"


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
