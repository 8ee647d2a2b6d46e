"""gemma2: norms stored as 1 + w (llama.cpp's converter adds the 1), embeddings
scaled by sqrt(hidden), norms after attention and after the MLP too, GELU
(tanh) MLP, soft-capped attention scores and logits, tied output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from . import common

SHAPE = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 128, "context": 8192}
# Small caps, so that a conversion that drops them cannot pass.
ATTN_CAP, FINAL_CAP, WINDOW = 0.5, 3.0, 4096


def write(path: Path, tokenizer_meta: dict[str, Any], *, types: tuple[Q, ...] = common.ALL_TYPES, seed: int = 7,
          tokenizer_model: str = "gpt2") -> Path:
    shape = SHAPE
    s = common.start(path, "gemma2", shape, tokenizer_meta, types, seed, tokenizer_model)
    s.writer.add_attn_logit_softcapping(ATTN_CAP)
    s.writer.add_final_logit_softcapping(FINAL_CAP)
    s.writer.add_sliding_window(WINDOW)
    write_layers(s, shape, tokenizer_meta, qk_norm=False)
    return common.finish(s, path)


def write_layers(s: common.Synth, shape: dict[str, int], tokenizer_meta: dict[str, Any], *, qk_norm: bool) -> None:
    h, f, hd = shape["hidden"], shape["ffn"], shape["head_dim"]
    q_rows, kv_rows = shape["heads"] * hd, shape["kv_heads"] * hd
    s.matrix("token_embd.weight", len(tokenizer_meta["tokenizer.ggml.tokens"]), h, Q.Q5_K)
    for i in range(shape["layers"]):
        p = f"blk.{i}."
        for norm in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            s.vector(p + norm + ".weight", h, mean=1.0)  # as stored: 1 + w
        s.matrix(p + "attn_q.weight", q_rows, h)
        s.matrix(p + "attn_k.weight", kv_rows, h)
        s.matrix(p + "attn_v.weight", kv_rows, h)
        if qk_norm:
            s.vector(p + "attn_q_norm.weight", hd, mean=1.0)
            s.vector(p + "attn_k_norm.weight", hd, mean=1.0)
        s.matrix(p + "attn_output.weight", h, q_rows)
        s.matrix(p + "ffn_gate.weight", f, h)
        s.matrix(p + "ffn_up.weight", f, h)
        s.matrix(p + "ffn_down.weight", h, f)
    s.vector("output_norm.weight", h, mean=1.0)


def forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int], *, caps: bool = True) -> np.ndarray:
    a = meta["general.architecture"]
    attn_cap = float(meta[f"{a}.attn_logit_softcapping"]) if caps else 0.0
    final_cap = float(meta[f"{a}.final_logit_softcapping"]) if caps else 0.0
    return gemma_forward(meta, w, ids, attn_cap=attn_cap, final_cap=final_cap, layer_rope=lambda i: {})


def gemma_forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int], *, attn_cap: float,
                  final_cap: float, layer_rope: Any, window_of: Any = lambda i: 0) -> np.ndarray:
    hp = common.hparams(meta)
    t, hd = len(ids), hp["head_dim"]
    x = w["token_embd.weight"][ids] * np.sqrt(hp["hidden"])
    for i in range(hp["layers"]):
        p = f"blk.{i}."
        h = common.rms_norm(x, w[p + "attn_norm.weight"], hp["eps"])
        q = (h @ w[p + "attn_q.weight"].T).reshape(t, hp["heads"], hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(t, hp["kv_heads"], hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(t, hp["kv_heads"], hd)
        if p + "attn_q_norm.weight" in w:
            q = common.rms_norm(q, w[p + "attn_q_norm.weight"], hp["eps"])
            k = common.rms_norm(k, w[p + "attn_k_norm.weight"], hp["eps"])
        rope = {"base": hp["base"], **layer_rope(i)}
        q, k = common.rope(q, neox=True, **rope), common.rope(k, neox=True, **rope)
        attn = common.attention(q, k, v, scale=hd**-0.5, softcap=attn_cap, window=window_of(i))
        x = x + common.rms_norm(attn @ w[p + "attn_output.weight"].T, w[p + "post_attention_norm.weight"], hp["eps"])
        h = common.rms_norm(x, w[p + "ffn_norm.weight"], hp["eps"])
        mlp = (common.gelu_tanh(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T))
        x = x + common.rms_norm(mlp @ w[p + "ffn_down.weight"].T, w[p + "post_ffw_norm.weight"], hp["eps"])
    logits = common.rms_norm(x, w["output_norm.weight"], hp["eps"]) @ w.get("output.weight", w["token_embd.weight"]).T
    return np.tanh(logits / final_cap) * final_cap if final_cap else logits
