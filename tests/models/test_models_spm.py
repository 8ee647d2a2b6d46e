"""SentencePiece-style GGUF vocabularies against the `sentencepiece` library
itself, on small BPE models trained here: with a dummy-prefix space (Llama 2,
Mistral, Phi-3, TinyLlama; written as llama and phi3 GGUFs) and without one
(Gemma; written as a gemma3 GGUF)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm  # an mlx-lm dependency
from gguf import GGMLQuantizationType as Q

from tests.models.archs import write_model
from tests.models.gguf_reference import read_gguf, reference_logits
from tests.models.gguf_synth import write_llama

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "café", "naïve", "日本", "語", "numbers", "12345", "code", "def", "return", "print", "self", "while", "for", "in", "range", "hello", "world"]
TEXTS = [
    "Hello world, the quick fox!",
    "  two leading spaces and   three inside",
    "naïve café 日本語 — unseen: Ωμέγα 🚀",
    "def run(self):\n\treturn 42\n",
    "digits 1234567890 and x=3.14",
    "",
]


FAMILIES = {  # name: (architecture, SentencePiece's add_dummy_prefix)
    "llama": ("llama", True),
    "phi3": ("phi3", True),
    "gemma": ("gemma3", False),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory) -> tuple:
    arch, prefix = FAMILIES[request.param]
    folder = tmp_path_factory.mktemp("spm")
    rng = random.Random(0)
    (folder / "corpus.txt").write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(3000)))
    # Llama's settings: identity normalization, a dummy-prefix space, digits split, byte fallback.
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "m"), vocab_size=400, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=prefix, split_digits=True, allow_whitespace_only_pieces=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(folder / "m.model"))
    kinds = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
             for i in range(sp.get_piece_size())]
    meta = {
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(sp.get_piece_size())],
        "tokenizer.ggml.token_type": kinds,
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": prefix,
    }
    if arch == "llama":
        gguf = write_llama(folder / "spm-llama.gguf", meta, tokenizer_model="llama", tied=True, qkv_bias=False)
    else:
        gguf = write_model(folder / f"spm-{arch}.gguf", arch, meta, tokenizer_model="llama", types=(Q.Q8_0, Q.F16))
    return sp, gguf


@pytest.fixture(scope="module")
def loaded(trained, tmp_path_factory):
    from worker.models import load_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KMLX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return load_model(str(trained[1]))


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_sentencepiece(trained, loaded, text):
    sp, _ = trained
    assert loaded.tokenizer.encode(text, add_special_tokens=False) == sp.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_bos(trained, loaded, text):
    sp, _ = trained
    tok = loaded.tokenizer
    ids = tok.encode(text)
    assert ids[0] == 1  # add_bos_token from the GGUF
    assert tok.decode(ids, skip_special_tokens=True) == sp.decode(sp.encode(text)) == text


def test_special_tokens_in_text(trained, loaded):
    sp, _ = trained
    ids = loaded.tokenizer.encode("</s>hello", add_special_tokens=False)
    # a space is prefixed after a special token, as in llama.cpp (when the vocabulary prefixes at all)
    assert ids[0] == 2 and ids[1:] == sp.encode("hello")


def test_logits_match_reference(trained, loaded):
    import mlx.core as mx

    meta, weights, _ = read_gguf(Path(trained[1]))
    ids = loaded.tokenizer.encode("the lazy dog")
    got = np.array(loaded.model(mx.array([ids]))[0], dtype=np.float64)
    assert np.abs(got - reference_logits(meta, weights, ids)).max() <= 1e-3
