"""gemma2 (Gemma 2) -> mlx_lm.models.gemma2.

llama.cpp stores every norm as 1 + weight (Gemma's convention, which mlx-lm
applies at run time), so 1 is taken off again. Attention and final logits are
soft-capped. mlx-lm's gemma2 attends globally in every layer, where Gemma 2
alternates global and sliding-window layers: the served context is capped at
the window so the two never differ. llama.cpp scales queries by
1/sqrt(hidden/heads) for the 27B model (46 layers), 1/sqrt(head size) otherwise.
"""

from __future__ import annotations

from typing import Any

from ..gguf_file import GGUFInfo
from . import common

# Gemma's activations overflow float16 (as Hugging Face warns): quantized layers
# keep bfloat16 scales, so Metal/CUDA compute in bfloat16.
SCALE_DTYPE = "bfloat16"
MODEL_TYPE = "gemma2"
LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}  # the output is the embedding
_27B_LAYERS = 46


def config(info: GGUFInfo) -> dict[str, Any]:
    c = common.shape_config(info)
    common.require_full_rotary(info, c["head_dim"])
    window = int(info.arch("attention.sliding_window", 4096))
    big = c["num_hidden_layers"] == _27B_LAYERS
    c.update({
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": MODEL_TYPE,
        "attn_logit_softcapping": float(info.arch("attn_logit_softcapping", 50.0)),
        "final_logit_softcapping": float(info.arch("final_logit_softcapping", 30.0)),
        "query_pre_attn_scalar": c["hidden_size"] / c["num_attention_heads"] if big else c["head_dim"],
        "max_position_embeddings": min(c["max_position_embeddings"], window),
        "sliding_window": window,
        "tie_word_embeddings": True,
    })
    return c


def plan(info: GGUFInfo, c: dict[str, Any]) -> list[common.TensorPlan]:
    return common.plan_tensors(info, LAYER, top=TOP, norm_add=-1.0, biases=False)
