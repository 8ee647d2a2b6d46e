"""Independent references for checking the GGUF conversion (test helper).

Nothing here uses kmlx code: tensors come from the `gguf` package's reader and
dequantizer, the forward passes (tests/models/archs/) run in float64 in each
GGUF's own layout (e.g. llama.cpp's permuted q/k rows with its adjacent-pair
rotary embedding), and the tokenizer is a plain byte-level BPE written from
the GPT-2 recipe.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import regex

# ---------------------------------------------------------------- tensors


def _fields(reader: Any) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items()}


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, str]]:
    """(metadata, float64 tensors in numpy row order, tensor type names), read and
    dequantized by the `gguf` package (llama.cpp's own Python reader)."""
    import gguf

    reader = gguf.GGUFReader(path)
    tensors, types = {}, {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        tensors[t.name] = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64).reshape(shape)
        types[t.name] = t.tensor_type.name
    return _fields(reader), tensors, types


def reference_logits(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int], **options: Any) -> np.ndarray:
    """float64 logits (len(ids), vocab) of a GGUF of any supported architecture, from its raw tensors."""
    from tests.models.archs import reference_logits as by_architecture

    return by_architecture(meta, w, ids, **options)


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
