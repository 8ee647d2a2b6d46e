"""Shared pieces of the per-architecture test references: writing a small
GGUF the way llama.cpp's converter would, and float64 NumPy building blocks
for forward passes with llama.cpp's semantics (test helper; no kmlx code).

Quantized tensors of types the `gguf` package cannot quantize (the K-quants,
IQ4) are random blocks: every byte pattern is a valid block, and only the
float16 scale fields are set, so that the weights have a sane magnitude.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

# Byte offsets of each type's float16 scale fields, and a typical size for them
# that gives weights of roughly +-0.1 (from ggml-common.h's block layouts).
_SCALE_FIELDS = {
    Q.Q2_K: ((80, 0.004), (82, 0.006)),
    Q.Q3_K: ((108, 0.0015),),
    Q.Q4_K: ((0, 0.0004), (2, 0.003)),
    Q.Q5_K: ((0, 0.0002), (2, 0.003)),
    Q.Q6_K: ((208, 0.00005),),
    Q.IQ4_NL: ((0, 0.0008),),
    Q.IQ4_XS: ((0, 0.00005),),
    Q.Q4_0: ((0, 0.015),),
    Q.Q4_1: ((0, 0.015), (2, -0.1)),
    Q.Q5_0: ((0, 0.007),),
    Q.Q5_1: ((0, 0.007), (2, -0.1)),
    Q.Q8_0: ((0, 0.001),),
}
QUANTIZABLE = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0}
ALL_TYPES = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
             Q.IQ4_NL, Q.IQ4_XS, Q.F16, Q.BF16, Q.F32)


def random_blocks(rng: np.random.Generator, qtype: Q, rows: int, cols: int) -> np.ndarray:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for at, typical in _SCALE_FIELDS[qtype]:
        d = (rng.uniform(0.5, 1.5, (rows, cols // block, 1)) * typical).astype(np.float16)
        raw[..., at : at + 2] = d.view(np.uint8)
    return raw.reshape(rows, -1)


@dataclass
class Synth:
    """A GGUF being written: a writer plus a cycle of tensor types for matrices."""

    writer: Any
    rng: np.random.Generator
    types: tuple[Q, ...]
    _next: int = field(default=0)

    def next_type(self) -> Q:
        t = self.types[self._next % len(self.types)]
        self._next += 1
        return t

    def matrix(self, name: str, rows: int, cols: int, qtype: Q | None = None, transform: Any = None) -> None:
        """A weight matrix; `transform` (e.g. llama.cpp's q/k permutation) applies to float values."""
        qtype = self.next_type() if qtype is None else qtype
        if qtype not in QUANTIZABLE and qtype in _SCALE_FIELDS:  # random blocks stand for transformed weights
            self.writer.add_tensor(name, random_blocks(self.rng, qtype, rows, cols), raw_dtype=qtype)
            return
        values = self.rng.standard_normal((rows, cols)) * 0.1
        self.add(name, transform(values) if transform else values, qtype)

    def vector(self, name: str, n: int, mean: float = 0.0, scale: float = 0.1, transform: Any = None) -> None:
        values = mean + scale * self.rng.standard_normal(n)
        self.add(name, transform(values) if transform else values, Q.F32)

    def add(self, name: str, values: np.ndarray, qtype: Q) -> None:
        if qtype == Q.F32:
            self.writer.add_tensor(name, values.astype(np.float32))
        elif qtype == Q.F16:
            self.writer.add_tensor(name, values.astype(np.float16))
        else:
            self.writer.add_tensor(name, gguf.quants.quantize(values.astype(np.float32), qtype), raw_dtype=qtype)


def start(path: Path, arch: str, shape: dict[str, int], tokenizer_meta: dict[str, Any],
          types: tuple[Q, ...], seed: int, tokenizer_model: str = "gpt2") -> Synth:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(shape["layers"])
    w.add_context_length(shape.get("context", 2048))
    w.add_embedding_length(shape["hidden"])
    w.add_feed_forward_length(shape["ffn"])
    w.add_head_count(shape["heads"])
    w.add_head_count_kv(shape["kv_heads"])
    if "head_dim" in shape:
        w.add_key_length(shape["head_dim"])
        w.add_value_length(shape["head_dim"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(shape.get("rope_base", 10000.0))
    add_tokenizer(w, tokenizer_meta, tokenizer_model)
    return Synth(w, np.random.default_rng(seed), types)


def add_tokenizer(w: Any, meta: dict[str, Any], model: str) -> None:
    w.add_tokenizer_model(model)
    if "tokenizer.ggml.pre" in meta:
        w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    if "tokenizer.ggml.merges" in meta:
        w.add_token_merges(meta["tokenizer.ggml.merges"])
    if "tokenizer.ggml.scores" in meta:
        w.add_token_scores(list(meta["tokenizer.ggml.scores"]))
    w.add_token_types(list(meta["tokenizer.ggml.token_type"]))
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                     ("unknown_token_id", w.add_unk_token_id)):
        if f"tokenizer.ggml.{key}" in meta:
            add(int(meta[f"tokenizer.ggml.{key}"]))
    for key, add in (("add_bos_token", w.add_add_bos_token), ("add_space_prefix", w.add_add_space_prefix)):
        if f"tokenizer.ggml.{key}" in meta:
            add(bool(meta[f"tokenizer.ggml.{key}"]))
    if "tokenizer.chat_template" in meta:
        w.add_chat_template(meta["tokenizer.chat_template"])


def finish(s: Synth, path: Path) -> Path:
    s.writer.write_header_to_file()
    s.writer.write_kv_data_to_file()
    s.writer.write_tensors_to_file()
    s.writer.close()
    return path


def write_llama_layers(s: Synth, shape: dict[str, int], *, biases: bool = False, qk_norm: bool = False,
                       permute: Any = None) -> None:
    """The layers of a llama-like model (llama, qwen2, qwen3): attention with optional
    q/k/v biases and per-head q/k norms, a SwiGLU MLP. permute(rows, heads) is
    llama.cpp's q/k row permutation, for llama."""
    h, f, n_head, n_kv = shape["hidden"], shape["ffn"], shape["heads"], shape["kv_heads"]
    hd = shape.get("head_dim", h // n_head)
    for i in range(shape["layers"]):
        p = f"blk.{i}."
        s.vector(p + "attn_norm.weight", h, mean=1.0)
        for name, heads in (("attn_q", n_head), ("attn_k", n_kv), ("attn_v", 0)):
            rows = (heads or n_kv) * hd
            rope_rows = (lambda w, n=heads: permute(w, n)) if permute and heads else None
            s.matrix(p + name + ".weight", rows, h, transform=rope_rows)
            if biases:
                s.vector(p + name + ".bias", rows, transform=rope_rows)
        if qk_norm:
            s.vector(p + "attn_q_norm.weight", hd, mean=1.0)
            s.vector(p + "attn_k_norm.weight", hd, mean=1.0)
        s.matrix(p + "attn_output.weight", h, n_head * hd)
        s.vector(p + "ffn_norm.weight", h, mean=1.0)
        s.matrix(p + "ffn_gate.weight", f, h)
        s.matrix(p + "ffn_up.weight", f, h)
        s.matrix(p + "ffn_down.weight", h, f)


# ---------------------------------------------------------------- float64 forward pieces


def hparams(meta: dict[str, Any]) -> dict[str, Any]:
    a = meta["general.architecture"]
    heads = int(meta[f"{a}.attention.head_count"])
    hidden = int(meta[f"{a}.embedding_length"])
    return {
        "layers": int(meta[f"{a}.block_count"]),
        "heads": heads,
        "kv_heads": int(meta.get(f"{a}.attention.head_count_kv", heads)),
        "head_dim": int(meta.get(f"{a}.attention.key_length", hidden // heads)),
        "hidden": hidden,
        "eps": float(meta[f"{a}.attention.layer_norm_rms_epsilon"]),
        "base": float(meta.get(f"{a}.rope.freq_base", 10000.0)),
    }


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, base: float, *, neox: bool, n_rot: int | None = None, positions_scale: float = 1.0,
         freq_factors: np.ndarray | None = None, mscale: float = 1.0) -> np.ndarray:
    """llama.cpp's rope on (tokens, heads, head_dim): "normal" rotates adjacent pairs
    (x[2i], x[2i+1]), NeoX rotates (x[i], x[i + n_rot/2]); dims past n_rot pass through."""
    t, _, d = x.shape
    n_rot = n_rot or d
    inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if freq_factors is not None:
        inv = inv / freq_factors
    ang = (np.arange(t, dtype=np.float64) * positions_scale)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :] * mscale, np.sin(ang)[:, None, :] * mscale
    out = x.copy()
    if neox:
        x0, x1 = x[..., : n_rot // 2], x[..., n_rot // 2 : n_rot]
        out[..., : n_rot // 2] = x0 * cos - x1 * sin
        out[..., n_rot // 2 : n_rot] = x0 * sin + x1 * cos
    else:
        x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = x0 * cos - x1 * sin
        out[..., 1:n_rot:2] = x0 * sin + x1 * cos
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: float, softcap: float = 0.0,
              window: int = 0) -> np.ndarray:
    """Causal GQA attention over (tokens, heads, head_dim); `window` keeps keys with q - k < window."""
    t, n_head, hd = q.shape
    rep = n_head // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) * scale
    if softcap:
        scores = np.tanh(scores / softcap) * softcap
    pos = np.arange(t)
    allowed = pos[None, :] <= pos[:, None]
    if window:
        allowed &= pos[:, None] - pos[None, :] < window
    scores = np.where(allowed, scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", scores, v).reshape(t, n_head * hd)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@contextlib.contextmanager
def numpy_blas_single_thread() -> Iterator[None]:
    """numpy's OpenBLAS threads spin-wait; on a busy 2-core machine that makes
    these small float64 matmuls 20x slower. One thread is plenty here."""
    try:
        with open("/proc/self/maps") as maps:
            path = next(ln.split()[-1] for ln in maps if "scipy_openblas" in ln)
        lib = ctypes.CDLL(path)
        get, put = lib.scipy_openblas_get_num_threads64_, lib.scipy_openblas_set_num_threads64_
    except (OSError, StopIteration, AttributeError):
        yield  # another numpy build: leave it alone
        return
    old = get()
    put(1)
    try:
        yield
    finally:
        put(old)


def llama_forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int], *, neox: bool) -> np.ndarray:
    """The llama block: optional q/k/v biases, optional per-head q/k norms (qwen3),
    rope in llama.cpp's "normal" (llama) or NeoX (qwen) layout, optional rope_freqs."""
    hp = hparams(meta)
    x = w["token_embd.weight"][ids]
    t, hd = len(ids), hp["head_dim"]
    rope_options: dict[str, Any] = {"neox": neox, "freq_factors": w.get("rope_freqs.weight")}
    for i in range(hp["layers"]):
        p = f"blk.{i}."
        h = rms_norm(x, w[p + "attn_norm.weight"], hp["eps"])
        q, k, v = (h @ w[p + f"attn_{n}.weight"].T + w.get(p + f"attn_{n}.bias", 0.0) for n in "qkv")
        q, k = q.reshape(t, hp["heads"], hd), k.reshape(t, hp["kv_heads"], hd)
        if p + "attn_q_norm.weight" in w:
            q = rms_norm(q, w[p + "attn_q_norm.weight"], hp["eps"])
            k = rms_norm(k, w[p + "attn_k_norm.weight"], hp["eps"])
        q, k = rope(q, hp["base"], **rope_options), rope(k, hp["base"], **rope_options)
        out = attention(q, k, v.reshape(t, hp["kv_heads"], hd), scale=hd**-0.5)
        x = x + out @ w[p + "attn_output.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"], hp["eps"])
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + (silu(gate) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = rms_norm(x, w["output_norm.weight"], hp["eps"])
    return x @ w.get("output.weight", w["token_embd.weight"]).T
