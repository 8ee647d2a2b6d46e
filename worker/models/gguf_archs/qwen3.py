"""qwen3 (Qwen3 dense) -> mlx_lm.models.qwen3.

No biases; an RMS norm over each head of q and k before rope (NeoX layout,
left unpermuted by llama.cpp's converter).
"""

from __future__ import annotations

from typing import Any

from ..gguf_file import GGUFInfo
from . import common

MODEL_TYPE = "qwen3"
LAYER = {**common.LLAMA_LAYER, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}


def config(info: GGUFInfo) -> dict[str, Any]:
    c = common.shape_config(info)
    common.require_full_rotary(info, c["head_dim"])
    c.update({"architectures": ["Qwen3ForCausalLM"], "model_type": MODEL_TYPE})
    if scaling := common.rope_scaling(info):
        c["rope_scaling"] = scaling
    return c


def plan(info: GGUFInfo, c: dict[str, Any]) -> list[common.TensorPlan]:
    return common.plan_tensors(info, LAYER, biases=False)
