"""One planned GGUF tensor in the two forms kmlx runs.

* stored form (the converted folder, what Metal/CUDA run): floats as they
  are, 2-D quantized tensors as MLX affine triples (`gguf_affine`);
* float32 form (what the CPU backend runs): every value exactly as
  llama.cpp dequantizes it (`gguf_quants`).

Both apply the plan's adjustments: llama.cpp's q/k row permutation undone,
Gemma's norm offset removed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ModelLoadError
from .gguf_affine import to_affine
from .gguf_archs.common import TensorPlan
from .gguf_file import GGUFInfo
from .gguf_quants import QUANT_TYPES, decode, dequantize_raw

_F16, _BF16 = 1, 30


def stored_form(info: GGUFInfo, plan: TensorPlan, scale_dtype: Any) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """{mlx name: array} and, for a quantized layer, its (bits, group size)."""
    import mlx.core as mx

    if plan.zeros:
        return {plan.target: mx.zeros(plan.zeros, dtype=mx.float32)}, None
    t = info.tensors[plan.source]
    if t.type_id in QUANT_TYPES and len(t.shape) == 2 and not plan.add:
        q = to_affine(decode(info.raw(plan.source), t.type_id), (t.shape[0], t.shape[1]), t.type_name, scale_dtype)
        parts = {"weight": q.weight, "scales": q.scales, "biases": q.biases}
        return {f"{plan.layer}.{k}": unpermute_rows(v, plan.unpermute_heads) for k, v in parts.items()}, (
            q.bits, q.group_size)
    if t.type_id == _F16 and not plan.add:
        value = mx.array(np.asarray(info.raw(plan.source)).view("<f2").reshape(t.shape))
    elif t.type_id == _BF16 and not plan.add:
        value = mx.array(_float32(info, plan.source)).astype(mx.bfloat16)  # bfloat16 -> float32 is exact
    else:
        value = mx.array(_float32(info, plan.source) + np.float32(plan.add))
    return {plan.target: unpermute_rows(value, plan.unpermute_heads)}, None


def float32_form(info: GGUFInfo, plan: TensorPlan) -> Any:
    """The tensor as float32 MLX array, exactly llama.cpp's values."""
    import mlx.core as mx

    if plan.zeros:
        return mx.zeros(plan.zeros, dtype=mx.float32)
    values = _float32(info, plan.source)
    if plan.add:
        values = values + np.float32(plan.add)
    return mx.array(unpermute_rows(values, plan.unpermute_heads))


def _float32(info: GGUFInfo, name: str) -> np.ndarray:
    t = info.tensors[name]
    return dequantize_raw(np.asarray(info.raw(name)), t.type_id).reshape(t.shape)


def unpermute_rows(x: Any, n_head: int) -> Any:
    """Inverse of llama.cpp's `reshape(n_head, 2, rows//n_head//2, ...).swapaxes(1, 2)`.

    Works on any row-major array (NumPy or MLX) whose axis 0 is the output row:
    float weights, packed uint32 weights, their scales and biases, bias vectors.
    n_head 0 leaves `x` as it is.
    """
    if not n_head:
        return x
    rows = x.shape[0]
    if rows % (2 * n_head):
        raise ModelLoadError(f"cannot un-permute {rows} rows over {n_head} heads")
    tail = tuple(x.shape[1:])
    return x.reshape(n_head, rows // n_head // 2, 2, *tail).swapaxes(1, 2).reshape(rows, *tail)
