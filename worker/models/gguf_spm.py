"""SentencePiece-style GGUF vocabularies (`tokenizer.ggml.model = llama`) as a
Hugging Face BPE tokenizer: Llama 2, Mistral, TinyLlama and kin.

SentencePiece BPE repeatedly merges the adjacent pair whose joined piece has
the highest score; a rank-ordered merge list sorted by that score does the
same, so the merges are derived from the vocabulary and its scores. Text
unknown to the vocabulary falls back to the <0xNN> byte tokens. Spaces become
"▁", and one is prefixed to every text segment, as llama.cpp does.
"""

from __future__ import annotations

from typing import Any

NORMAL, USER_DEFINED = 1, 4
SPACE = "\u2581"  # ▁


def spm_tokenizer(tokens: list[str], scores: list[float], kinds: list[int],
                  unk_id: int | None, add_space_prefix: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    unk = tokens[unk_id] if unk_id is not None else None
    bpe = models.BPE(vocab=vocab, merges=merges_from_scores(tokens, scores, kinds),
                     unk_token=unk, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    steps: list[Any] = [normalizers.Replace(" ", SPACE)]
    if add_space_prefix:
        steps.insert(0, normalizers.Prepend(SPACE))
    tokenizer.normalizer = normalizers.Sequence(steps)
    parts = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        parts.append(decoders.Strip(" ", 1, 0))  # the prefixed space is not text
    tokenizer.decoder = decoders.Sequence(parts)
    return tokenizer


def merges_from_scores(tokens: list[str], scores: list[float], kinds: list[int]) -> list[tuple[str, str]]:
    """Every split of a normal piece into two normal pieces, best joined score first."""
    ids: dict[str, int] = {}
    for i, (tok, kind) in enumerate(zip(tokens, kinds)):
        if kind in (NORMAL, USER_DEFINED):
            ids.setdefault(tok, i)
    ranked = []
    for piece, pid in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[pid], pid, ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]
