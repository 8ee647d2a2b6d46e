"""phi3 (Phi-3, Phi-3.5, Phi-4 mini and Phi-4) -> mlx_lm.models.phi3.

q, k and v come fused in one `attn_qkv` tensor and gate and up in one
`ffn_up` tensor, which is exactly mlx-lm's qkv_proj / gate_up_proj. LongRoPE
(the 128k-context models) comes as two factor tensors; mlx-lm applies the long
factors at every length, as llama.cpp does when its context exceeds the
original one. llama.cpp ignores Phi-3's sliding window, and so does mlx-lm.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ModelLoadError
from ..gguf_file import GGUFInfo
from ..gguf_rope import read_f32_tensor
from . import common

MODEL_TYPE = "phi3"
LAYER = {
    "attn_norm": "input_layernorm",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_up": "mlp.gate_up_proj",
    "ffn_down": "mlp.down_proj",
}
_FACTORS = ("rope_factors_long", "rope_factors_short")


def config(info: GGUFInfo) -> dict[str, Any]:
    c = common.shape_config(info)
    name = info.path.name
    if c["head_dim"] * c["num_attention_heads"] != c["hidden_size"]:
        raise ModelLoadError(f"{name}: phi3 with a head size other than hidden/heads is not supported")
    if "blk.0.attn_q.weight" in info.tensors:
        raise ModelLoadError(f"{name}: phi3 GGUFs with separate q/k/v tensors are not supported (fused attn_qkv is)")
    rope_dims = int(info.arch("rope.dimension_count", c["head_dim"]))
    c.update({
        "architectures": ["Phi3ForCausalLM"],
        "model_type": MODEL_TYPE,
        "partial_rotary_factor": rope_dims / c["head_dim"],
        "original_max_position_embeddings": int(
            info.arch("rope.scaling.original_context_length", c["max_position_embeddings"])
        ),
    })
    if "rope_factors_long.weight" in info.tensors:
        c["rope_scaling"] = _longrope(info, c, rope_dims)
    elif scaling := common.rope_scaling(info):
        if scaling["rope_type"] != "linear":
            raise ModelLoadError(f"{name}: rope scaling {scaling['rope_type']!r} is not supported for phi3")
        c["rope_scaling"] = {"type": "linear", "factor": scaling["factor"]}  # mlx-lm's phi3 reads "type"
    return c


def _longrope(info: GGUFInfo, c: dict[str, Any], rope_dims: int) -> dict[str, Any]:
    long = read_f32_tensor(info, "rope_factors_long.weight")
    short = read_f32_tensor(info, "rope_factors_short.weight") if "rope_factors_short.weight" in info.tensors else long
    if long.shape != (rope_dims // 2,) or short.shape != long.shape:
        raise ModelLoadError(f"{info.path.name}: rope factor tensors of {long.size} entries, expected {rope_dims // 2}")
    # mlx-lm derives the attention factor from the two lengths; it must be the file's.
    ratio = c["max_position_embeddings"] / c["original_max_position_embeddings"]
    expected = math.sqrt(1 + math.log(ratio) / math.log(c["original_max_position_embeddings"])) if ratio > 1 else 1.0
    found = float(info.arch("rope.scaling.attn_factor", expected))
    if not np.isclose(found, expected, rtol=1e-4):
        raise ModelLoadError(f"{info.path.name}: rope attention factor {found} is not LongRoPE's {expected:.6f}")
    return {"type": "longrope", "long_factor": long.tolist(), "short_factor": short.tolist()}


def plan(info: GGUFInfo, c: dict[str, Any]) -> list[common.TensorPlan]:
    return common.plan_tensors(info, LAYER, skip=_FACTORS, biases=False)
