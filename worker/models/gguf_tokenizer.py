"""Rebuild a Hugging Face `tokenizer.json` + `tokenizer_config.json` from GGUF metadata.

GGUF keeps the byte-level BPE vocabulary, merges, token kinds and the name of
llama.cpp's pre-tokenizer; with these the `tokenizers` library reproduces the
original tokenizer, and mlx-lm's ordinary loader then takes the folder as is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .gguf_file import GGUFInfo

# GGUF token kinds (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Splits llama.cpp applies before BPE, by `tokenizer.ggml.pre`. "gpt2" is the
# classic GPT-2 rule (what ByteLevel(use_regex=True) does); the others add or
# replace a regex split in front of it.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Mistral's Tekken (Nemo, Small 3): words split at case changes, digits alone.
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZERS: dict[str, tuple[str, str | None]] = {
    # name: (kind, regex)
    "default": ("gpt2", None),
    "gpt-2": ("gpt2", None),
    "gpt2": ("gpt2", None),
    "smollm": ("digits+gpt2", None),
    "starcoder": ("digits+gpt2", None),
    "refact": ("digits+gpt2", None),
    "codeshell": ("digits+gpt2", None),
    "llama-bpe": ("split", _LLAMA3_SPLIT),
    "llama3": ("split", _LLAMA3_SPLIT),
    "smaug-bpe": ("split", _LLAMA3_SPLIT),
    "qwen2": ("split", _QWEN2_SPLIT),
    "tekken": ("split", _TEKKEN_SPLIT),
}
# llama.cpp uses whole-word vocabulary hits before merging only for llama-3.
_IGNORE_MERGES = {"llama-bpe", "llama3", "smaug-bpe"}


def write_tokenizer(info: GGUFInfo, out: Path) -> dict[str, Any]:
    """Write tokenizer.json and tokenizer_config.json into `out`; return the ids used."""
    from tokenizers import AddedToken, processors

    tokens: list[str] = list(info.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise ModelLoadError(f"{info.path.name}: the GGUF has no tokenizer vocabulary")
    kinds: list[int] = list(info.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    ids = _special_ids(info, len(tokens))
    if info.get("tokenizer.ggml.model") == "llama":  # SentencePiece-style vocabulary
        from .gguf_spm import spm_tokenizer

        scores = list(info.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
        tokenizer = spm_tokenizer(tokens, scores, kinds, ids["unk"],
                                  bool(info.get("tokenizer.ggml.add_space_prefix", True)))
    else:
        tokenizer = _byte_level_bpe(info, tokens)

    # Control tokens (<|im_start|>, <s>, <unk> ...) are matched whole before BPE and are
    # "special" (skipped when decoding with skip_special_tokens); user-defined
    # ones are matched whole too but are ordinary text.
    # Both keep their ids, which are already in the vocabulary.
    tokenizer.add_special_tokens([
        AddedToken(tok, special=True, normalized=False)
        for tok, kind in zip(tokens, kinds) if kind in (CONTROL, UNKNOWN)
    ])
    tokenizer.add_tokens([
        AddedToken(tok, special=False, normalized=False)
        for tok, kind in zip(tokens, kinds) if kind == USER_DEFINED
    ])

    name = {key: tokens[i] if i is not None else None for key, i in ids.items()}
    add_bos = bool(info.get("tokenizer.ggml.add_bos_token", False)) and name["bos"] is not None
    add_eos = bool(info.get("tokenizer.ggml.add_eos_token", False)) and name["eos"] is not None
    tokenizer.post_processor = _post_processor(processors, name, ids, add_bos, add_eos)
    tokenizer.save(str(out / "tokenizer.json"))

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(info.arch("context_length", 4096)),
    }
    for key in ("bos", "eos", "unk", "pad"):
        if name[key] is not None:
            config[f"{key}_token"] = name[key]
    template = info.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return ids


def _byte_level_bpe(info: GGUFInfo, tokens: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    merges = [tuple(m.split(" ", 1)) for m in info.get("tokenizer.ggml.merges") or []]
    pre = str(info.get("tokenizer.ggml.pre", "default"))
    if pre not in _PRE_TOKENIZERS:
        raise ModelLoadError(
            f"{info.path.name}: GGUF pre-tokenizer {pre!r} is not supported "
            f"(supported: {', '.join(sorted(_PRE_TOKENIZERS))})"
        )
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)  # a duplicated string keeps its first id
    bpe = models.BPE(
        vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
        ignore_merges=pre in _IGNORE_MERGES,
    )
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = _pre_tokenizer(pre, pre_tokenizers)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _pre_tokenizer(pre: str, pre_tokenizers: Any) -> Any:
    from tokenizers import Regex

    kind, regex = _PRE_TOKENIZERS[pre]
    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "digits+gpt2":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    assert regex is not None, pre
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _post_processor(processors: Any, name: dict, ids: dict, add_bos: bool, add_eos: bool) -> Any:
    if not (add_bos or add_eos):
        return processors.ByteLevel(trim_offsets=False)
    bos = f"{name['bos']}:0 " if add_bos else ""
    eos = f" {name['eos']}:0" if add_eos else ""
    special = [(name[k], ids[k]) for k, on in (("bos", add_bos), ("eos", add_eos)) if on]
    return processors.TemplateProcessing(
        single=f"{bos}$A:0{eos}", pair=f"{bos}$A:0{eos} {bos}$B:1{eos}", special_tokens=special
    )


def _special_ids(info: GGUFInfo, n_vocab: int) -> dict[str, int | None]:
    ids: dict[str, int | None] = {}
    for key, gguf_key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                          ("unk", "unknown_token_id"), ("pad", "padding_token_id")):
        value = info.get(f"tokenizer.ggml.{gguf_key}")
        ids[key] = int(value) if value is not None and 0 <= int(value) < n_vocab else None
    return ids
