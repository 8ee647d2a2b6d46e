"""qwen2 (Qwen2, Qwen2.5 and their coders) -> mlx_lm.models.qwen2.

q/k/v carry biases; rope is the half-split (NeoX) kind, which llama.cpp's
converter leaves unpermuted.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError
from ..gguf_file import GGUFInfo
from . import common

MODEL_TYPE = "qwen2"


def config(info: GGUFInfo) -> dict[str, Any]:
    c = common.shape_config(info)
    if c["head_dim"] * c["num_attention_heads"] != c["hidden_size"]:
        raise ModelLoadError(f"{info.path.name}: qwen2 with a head size other than hidden/heads is not supported")
    common.require_full_rotary(info, c["head_dim"])
    c.update({"architectures": ["Qwen2ForCausalLM"], "model_type": MODEL_TYPE, "rope_traditional": False})
    if scaling := common.rope_scaling(info):
        c["rope_scaling"] = scaling
    return c


def plan(info: GGUFInfo, c: dict[str, Any]) -> list[common.TensorPlan]:
    plans = common.plan_tensors(info, common.LLAMA_LAYER)
    kv = c["num_key_value_heads"] * c["head_dim"]
    return common.zero_biases(c, plans, {"self_attn.q_proj": c["hidden_size"], "self_attn.k_proj": kv,
                                         "self_attn.v_proj": kv})
