"""gemma3 (Gemma 3 text; the vision tower of 4B+ lives in a separate mmproj file)
-> mlx_lm.models.gemma3_text.

As gemma2, norms are stored as 1 + weight. q and k get a per-head RMS norm.
Five sliding-window layers (rope base 10000) alternate with one global layer
(the file's rope base and linear scaling), as llama.cpp hard-codes; mlx-lm's
gemma3_text implements the same windows. Queries are scaled as in gemma2
(the 27B model has 62 layers).
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError
from ..gguf_file import GGUFInfo
from . import common
from .gemma2 import LAYER as GEMMA2_LAYER

# Gemma's activations overflow float16 (as Hugging Face warns): quantized layers
# keep bfloat16 scales, so Metal/CUDA compute in bfloat16.
SCALE_DTYPE = "bfloat16"
MODEL_TYPE = "gemma3_text"
LAYER = {**GEMMA2_LAYER, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_27B_LAYERS = 62
_SLIDING_PATTERN = 6  # every 6th layer is global (llama.cpp's gemma3 loader)
_LOCAL_ROPE_BASE = 10000.0


def config(info: GGUFInfo) -> dict[str, Any]:
    c = common.shape_config(info)
    common.require_full_rotary(info, c["head_dim"])
    if info.arch("final_logit_softcapping") or info.arch("attn_logit_softcapping"):
        raise ModelLoadError(f"{info.path.name}: soft-capping in a gemma3 GGUF is not supported")
    big = c["num_hidden_layers"] == _27B_LAYERS
    c.update({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": MODEL_TYPE,
        "query_pre_attn_scalar": c["hidden_size"] / c["num_attention_heads"] if big else c["head_dim"],
        "sliding_window": int(info.arch("attention.sliding_window", 4096)),
        "sliding_window_pattern": _sliding_pattern(info, c["num_hidden_layers"]),
        "rope_local_base_freq": float(info.arch("rope.freq_base_swa", _LOCAL_ROPE_BASE)),
    })
    scaling = common.rope_scaling(info)
    if scaling and scaling["rope_type"] != "linear":
        raise ModelLoadError(f"{info.path.name}: rope scaling {scaling['rope_type']!r} is not supported for gemma3")
    c["rope_scaling"] = scaling
    return c


def _sliding_pattern(info: GGUFInfo, layers: int) -> int:
    """Every n-th layer global: the file's number, or its per-layer list if it has that shape."""
    found = info.arch("attention.sliding_window_pattern", _SLIDING_PATTERN)
    if not isinstance(found, list):
        return int(found)
    for n in range(1, layers + 1):
        if [bool((i + 1) % n) for i in range(layers)] == [bool(x) for x in found]:
            return n
    raise ModelLoadError(f"{info.path.name}: gemma3 sliding-window layers {found} are not every n-th layer global")


def plan(info: GGUFInfo, c: dict[str, Any]) -> list[common.TensorPlan]:
    return common.plan_tensors(info, LAYER, norm_add=-1.0, biases=False)
