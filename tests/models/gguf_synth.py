"""Write small synthetic GGUF files (test helper), the way llama.cpp's converter would.

Uses only the `gguf` package: q/k rows are permuted with llama.cpp's formula
before quantizing, so the files have exactly the layout real GGUFs have.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

SHAPE = {"hidden": 64, "ffn": 128, "layers": 2, "heads": 4, "kv_heads": 2}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add(writer: Any, name: str, values: np.ndarray, qtype: Q) -> None:
    if qtype == Q.F32:
        writer.add_tensor(name, values.astype(np.float32))
    elif qtype == Q.F16:
        writer.add_tensor(name, values.astype(np.float16))
    elif qtype == Q.BF16:
        writer.add_tensor(name, gguf.quants.quantize(values.astype(np.float32), qtype), raw_dtype=qtype)
    else:
        writer.add_tensor(name, gguf.quants.quantize(values.astype(np.float32), qtype), raw_dtype=qtype)


def write_llama(
    path: Path,
    tokenizer_meta: dict[str, Any],
    *,
    arch: str = "llama",
    types: tuple[Q, ...] = (Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.F16, Q.F32),
    tied: bool = False,
    qkv_bias: bool = True,
    tokenizer_model: str = "gpt2",
    rope_freqs: np.ndarray | None = None,
    seed: int = 7,
) -> Path:
    rng = np.random.default_rng(seed)
    h, f, n_layers = SHAPE["hidden"], SHAPE["ffn"], SHAPE["layers"]
    n_head, n_kv = SHAPE["heads"], SHAPE["kv_heads"]
    head_dim = h // n_head
    vocab = len(tokenizer_meta["tokenizer.ggml.tokens"])
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(2048)
    w.add_embedding_length(h)
    w.add_feed_forward_length(f)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model(tokenizer_model)
    if "tokenizer.ggml.pre" in tokenizer_meta:
        w.add_tokenizer_pre(tokenizer_meta["tokenizer.ggml.pre"])
    w.add_token_list(tokenizer_meta["tokenizer.ggml.tokens"])
    if "tokenizer.ggml.merges" in tokenizer_meta:
        w.add_token_merges(tokenizer_meta["tokenizer.ggml.merges"])
    if "tokenizer.ggml.scores" in tokenizer_meta:
        w.add_token_scores(list(tokenizer_meta["tokenizer.ggml.scores"]))
    w.add_token_types(list(tokenizer_meta["tokenizer.ggml.token_type"]))
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                     ("unknown_token_id", w.add_unk_token_id)):
        if f"tokenizer.ggml.{key}" in tokenizer_meta:
            add(int(tokenizer_meta[f"tokenizer.ggml.{key}"]))
    for key, add_flag in (("add_bos_token", w.add_add_bos_token), ("add_space_prefix", w.add_add_space_prefix)):
        if f"tokenizer.ggml.{key}" in tokenizer_meta:
            add_flag(bool(tokenizer_meta[f"tokenizer.ggml.{key}"]))
    if "tokenizer.chat_template" in tokenizer_meta:
        w.add_chat_template(tokenizer_meta["tokenizer.chat_template"])

    cycle = itertools.cycle(types)
    mat = lambda rows, cols: rng.standard_normal((rows, cols)) * 0.1  # noqa: E731
    _add(w, "token_embd.weight", mat(vocab, h), Q.Q8_0)
    for i in range(n_layers):
        p = f"blk.{i}."
        _add(w, p + "attn_norm.weight", 1 + 0.1 * rng.standard_normal(h), Q.F32)
        _add(w, p + "attn_q.weight", llama_cpp_permute(mat(h, h), n_head), next(cycle))
        _add(w, p + "attn_k.weight", llama_cpp_permute(mat(n_kv * head_dim, h), n_kv), next(cycle))
        _add(w, p + "attn_v.weight", mat(n_kv * head_dim, h), next(cycle))
        if qkv_bias:
            _add(w, p + "attn_q.bias", llama_cpp_permute(rng.standard_normal(h) * 0.1, n_head), Q.F32)
            _add(w, p + "attn_k.bias", llama_cpp_permute(rng.standard_normal(n_kv * head_dim) * 0.1, n_kv), Q.F32)
            _add(w, p + "attn_v.bias", rng.standard_normal(n_kv * head_dim) * 0.1, Q.F32)
        _add(w, p + "attn_output.weight", mat(h, h), next(cycle))
        _add(w, p + "ffn_norm.weight", 1 + 0.1 * rng.standard_normal(h), Q.F32)
        _add(w, p + "ffn_gate.weight", mat(f, h), next(cycle))
        _add(w, p + "ffn_up.weight", mat(f, h), next(cycle))
        _add(w, p + "ffn_down.weight", mat(h, f), next(cycle))
    if rope_freqs is not None:  # what llama.cpp writes for Llama-3.1 rope scaling
        _add(w, "rope_freqs.weight", np.asarray(rope_freqs, np.float32), Q.F32)
    _add(w, "output_norm.weight", 1 + 0.1 * rng.standard_normal(h), Q.F32)
    if not tied:
        _add(w, "output.weight", mat(vocab, h), Q.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_raw(path: Path, arch: str, tensors: dict[str, tuple[Q, tuple[int, int]]], meta: dict[str, str]) -> Path:
    """A header-valid GGUF with zero-filled tensors of any type (for error tests)."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        w.add_string(key, value)
    for name, (qtype, (rows, cols)) in tensors.items():
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        w.add_tensor(name, np.zeros((rows, cols // block * size), np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
