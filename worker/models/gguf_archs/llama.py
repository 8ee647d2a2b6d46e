"""llama (Llama 1-3, SmolLM, Mistral 7B/Nemo/Small, TinyLlama ...) -> mlx_lm.models.llama.

llama.cpp's converter permutes the rows of q and k for its adjacent-pair
rotary layout; they are un-permuted back, so mlx-lm's standard rope applies.
Llama 3.1+ rope scaling comes as a `rope_freqs` tensor (see gguf_rope).
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError
from ..gguf_file import GGUFInfo
from . import common

MODEL_TYPE = "llama"


def config(info: GGUFInfo) -> dict[str, Any]:
    c = common.shape_config(info)
    common.require_full_rotary(info, c["head_dim"])
    c.update({
        "architectures": ["LlamaForCausalLM"],
        "model_type": MODEL_TYPE,
        "rope_traditional": False,  # q/k rows are un-permuted back to the HF layout
        "attention_bias": "blk.0.attn_q.bias" in info.tensors,
        "mlp_bias": False,
    })
    if "rope_freqs.weight" in info.tensors:  # Llama 3.1+: the parameters are baked into a tensor
        from ..gguf_rope import rope_scaling_from_freqs

        c["rope_scaling"] = rope_scaling_from_freqs(info, c["head_dim"], c["rope_theta"])
    elif scaling := common.rope_scaling(info):
        if scaling["rope_type"] != "linear":
            raise ModelLoadError(f"{info.path.name}: rope scaling {scaling['rope_type']!r} is not supported for llama")
        c["rope_scaling"] = scaling
    return c


def plan(info: GGUFInfo, c: dict[str, Any]) -> list[common.TensorPlan]:
    plans = common.plan_tensors(
        info, common.LLAMA_LAYER, skip=("rope_freqs",),
        unpermute={"attn_q": c["num_attention_heads"], "attn_k": c["num_key_value_heads"]},
    )
    if c["attention_bias"]:  # mlx-lm then expects an o_proj bias too; GGUFs have q/k/v only
        plans = common.zero_biases(c, plans, {"self_attn.o_proj": c["hidden_size"]})
    return plans
