"""llama: the GGUF llama.cpp's converter writes (q/k rows permuted for its
adjacent-pair rope, optional q/k/v biases, optional Llama-3.1 rope_freqs),
and its forward pass in float64."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from . import common

SHAPE = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 4, "kv_heads": 2}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write(path: Path, tokenizer_meta: dict[str, Any], *, types: tuple[Q, ...] = common.ALL_TYPES, seed: int = 7,
          shape: dict[str, int] = SHAPE, tied: bool = False, qkv_bias: bool = True, tokenizer_model: str = "gpt2",
          rope_freqs: np.ndarray | None = None, embed_type: Q = Q.Q8_0, output_type: Q = Q.Q4_0) -> Path:
    s = common.start(path, "llama", shape, tokenizer_meta, types, seed, tokenizer_model)
    h, f, n_head, n_kv = shape["hidden"], shape["ffn"], shape["heads"], shape["kv_heads"]
    hd = h // n_head
    s.writer.add_rope_dimension_count(hd)
    vocab = len(tokenizer_meta["tokenizer.ggml.tokens"])
    s.matrix("token_embd.weight", vocab, h, embed_type)
    for i in range(shape["layers"]):
        p = f"blk.{i}."
        s.vector(p + "attn_norm.weight", h, mean=1.0)
        s.matrix(p + "attn_q.weight", h, h, transform=lambda w: llama_cpp_permute(w, n_head))
        s.matrix(p + "attn_k.weight", n_kv * hd, h, transform=lambda w: llama_cpp_permute(w, n_kv))
        s.matrix(p + "attn_v.weight", n_kv * hd, h)
        if qkv_bias:
            s.vector(p + "attn_q.bias", h, transform=lambda b: llama_cpp_permute(b, n_head))
            s.vector(p + "attn_k.bias", n_kv * hd, transform=lambda b: llama_cpp_permute(b, n_kv))
            s.vector(p + "attn_v.bias", n_kv * hd)
        s.matrix(p + "attn_output.weight", h, h)
        s.vector(p + "ffn_norm.weight", h, mean=1.0)
        s.matrix(p + "ffn_gate.weight", f, h)
        s.matrix(p + "ffn_up.weight", f, h)
        s.matrix(p + "ffn_down.weight", h, f)
    if rope_freqs is not None:  # what llama.cpp writes for Llama-3.1 rope scaling
        s.add("rope_freqs.weight", np.asarray(rope_freqs), Q.F32)
    s.vector("output_norm.weight", h, mean=1.0)
    if not tied:
        s.matrix("output.weight", vocab, h, output_type)
    return common.finish(s, path)


def forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    hp = common.hparams(meta)
    x = w["token_embd.weight"][ids]
    t = len(ids)
    for i in range(hp["layers"]):
        p = f"blk.{i}."
        h = common.rms_norm(x, w[p + "attn_norm.weight"], hp["eps"])
        q, k, v = (h @ w[p + f"attn_{n}.weight"].T + w.get(p + f"attn_{n}.bias", 0.0) for n in "qkv")
        hd = hp["head_dim"]
        rope = {"neox": False, "freq_factors": w.get("rope_freqs.weight")}
        q = common.rope(q.reshape(t, hp["heads"], hd), hp["base"], **rope)
        k = common.rope(k.reshape(t, hp["kv_heads"], hd), hp["base"], **rope)
        attn = common.attention(q, k, v.reshape(t, hp["kv_heads"], hd), scale=hd**-0.5)
        x = x + attn @ w[p + "attn_output.weight"].T
        h = common.rms_norm(x, w[p + "ffn_norm.weight"], hp["eps"])
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + (common.silu(gate) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = common.rms_norm(x, w["output_norm.weight"], hp["eps"])
    return x @ w.get("output.weight", w["token_embd.weight"]).T
