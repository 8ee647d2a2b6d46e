"""Independent references for checking the GGUF conversion (test helper).

Nothing here uses kmlx code: tensors come from the `gguf` package's reader and
are dequantized by hand in NumPy, the forward pass runs in float64 in the
GGUF's own layout (llama.cpp's permuted q/k rows with its adjacent-pair
rotary embedding), and the tokenizer is a plain byte-level BPE written from
the GPT-2 recipe.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import regex

# ---------------------------------------------------------------- tensors


def _fields(reader: Any) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items()}


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
    """(metadata, float64 tensors in numpy row order, tensor type names)."""
    import gguf

    reader = gguf.GGUFReader(path)
    tensors, types = {}, {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        shape = tuple(int(d) for d in reversed(t.shape))
        tensors[t.name] = dequantize(np.asarray(t.data), kind, shape)
        types[t.name] = kind
    return _fields(reader), tensors, types


def dequantize(raw: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind in ("F32", "F16"):
        return raw.astype(np.float64).reshape(shape)
    if kind == "BF16":  # the top half of a float32
        bits = raw.reshape(-1).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64).reshape(shape)
    blocks = raw.reshape(-1).view(np.uint8)
    if kind == "Q8_0":  # 2-byte f16 scale, 32 int8
        b = blocks.reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float64)
        q = b[:, 2:].copy().view(np.int8).astype(np.float64)
        return (q * d).reshape(shape)
    if kind in ("Q4_0", "Q4_1"):  # f16 scale (+ f16 min), 16 bytes of nibbles
        width = 18 if kind == "Q4_0" else 20
        b = blocks.reshape(-1, width)
        d = b[:, :2].copy().view(np.float16).astype(np.float64)
        qs = b[:, width - 16 :]
        # low nibbles are elements 0..15 of the block, high nibbles 16..31
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64)
        if kind == "Q4_0":
            return ((q - 8) * d).reshape(shape)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float64)
        return (q * d + m).reshape(shape)
    raise NotImplementedError(kind)


# ---------------------------------------------------------------- forward pass


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope_adjacent(x: np.ndarray, base: float, freq_factors: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp's normal rope: rotates the pairs (x[2i], x[2i+1]); rope_freqs divide the frequencies."""
    t, _, d = x.shape
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    if freq_factors is not None:
        inv = inv / freq_factors
    ang = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


@contextlib.contextmanager
def _numpy_blas_single_thread() -> Iterator[None]:
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


def reference_logits(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """float64 logits (len(ids), vocab) of a llama GGUF, computed from its raw tensors."""
    with _numpy_blas_single_thread():
        return _forward(meta, w, ids)


def _forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    a = meta["general.architecture"]
    n_layers = int(meta[f"{a}.block_count"])
    n_head = int(meta[f"{a}.attention.head_count"])
    n_kv = int(meta.get(f"{a}.attention.head_count_kv", n_head))
    eps = float(meta[f"{a}.attention.layer_norm_rms_epsilon"])
    base = float(meta.get(f"{a}.rope.freq_base", 10000.0))
    x = w["token_embd.weight"][ids]
    t = len(ids)
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(n_layers):
        p = f"blk.{i}."
        h = _rms_norm(x, w[p + "attn_norm.weight"], eps)
        q, k, v = (h @ w[p + f"attn_{n}.weight"].T + w.get(p + f"attn_{n}.bias", 0.0) for n in "qkv")
        hd = q.shape[-1] // n_head
        q = _rope_adjacent(q.reshape(t, n_head, hd), base, w.get("rope_freqs.weight"))
        k = _rope_adjacent(k.reshape(t, n_kv, hd), base, w.get("rope_freqs.weight"))
        v = v.reshape(t, n_kv, hd)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", scores, v).reshape(t, n_head * hd)
        x = x + attn @ w[p + "attn_output.weight"].T
        h = _rms_norm(x, w[p + "ffn_norm.weight"], eps)
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = _rms_norm(x, w["output_norm.weight"], eps)
    return x @ w.get("output.weight", w["token_embd.weight"]).T


# ---------------------------------------------------------------- tokenizer

# llama.cpp's split for the "smollm" pre-tokenizer: every digit alone, then GPT-2's rule.
_DIGIT = regex.compile(r"\p{N}")
_GPT2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")


@lru_cache(maxsize=1)
def _byte_chars() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class ReferenceBPE:
    def __init__(self, tokens: list[str], merges: list[str], token_types: list[int]) -> None:
        self.vocab = {tok: i for i, tok in reversed(list(enumerate(tokens)))}
        self.tokens = tokens
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        special = [tok for tok, kind in zip(tokens, token_types) if kind == 3]
        self.special = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(special, key=len, reverse=True)) + ")")
        self.special_set = set(special)
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self.special.split(text):
            if not part:
                continue
            if part in self.special_set:
                ids.append(self.vocab[part])
                continue
            for piece in self._pre_split(part):
                ids.extend(self._bpe(piece))
        return ids

    def decode(self, ids: list[int]) -> str:
        back = {c: b for b, c in _byte_chars().items()}
        out = bytearray()
        for i in ids:
            tok = self.tokens[i]
            if tok in self.special_set:
                out.extend(tok.encode())
            else:
                out.extend(back[c] for c in tok)
        return out.decode("utf-8", errors="replace")

    @staticmethod
    def _pre_split(text: str) -> list[str]:
        pieces: list[str] = []
        chunks: list[str] = []
        pos = 0
        for m in _DIGIT.finditer(text):  # digits become chunks of their own
            if m.start() > pos:
                chunks.append(text[pos : m.start()])
            chunks.append(m.group())
            pos = m.end()
        if pos < len(text):
            chunks.append(text[pos:])
        for chunk in chunks:
            pieces.extend(m.group() for m in _GPT2.finditer(chunk))
        return pieces

    def _bpe(self, piece: str) -> list[int]:
        if piece in self._cache:
            return self._cache[piece]
        chars = _byte_chars()
        word = [chars[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 60), j) for j, (a, b) in enumerate(zip(word, word[1:]))]
            rank, j = min(pairs)
            if rank == 1 << 60:
                break
            first, second = word[j], word[j + 1]
            merged, k = [], 0
            while k < len(word):  # merge every occurrence of the best pair
                if k + 1 < len(word) and word[k] == first and word[k + 1] == second:
                    merged.append(first + second)
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        ids = [self.vocab[w] for w in word]
        self._cache[piece] = ids
        return ids
