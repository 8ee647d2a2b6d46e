"""The tokenizer rebuilt from GGUF metadata matches an independent byte-level BPE."""

from __future__ import annotations

import pytest

from tests.models.gguf_reference import ReferenceBPE

TEXTS = [
    "Hello world!",
    "What is the capital of France?",
    "naïve café — 日本語のテキスト 🚀🎉 👩‍💻 Ωμέγα",
    "مرحبا بالعالم",
    "def f(x):\n    return x**2  # square\n\tif a != b: pass\n",
    'json = {"key": [1, 2.5, null], "emoji": "\\u263a"}',
    "  leading, double  inner and trailing  \n\n\t\r\n",
    "\u00a0nbsp\u2003em-space\u200bzero-width",
    "3.14159 and 1,000,000 on 2024-06-01 at 23:59",
    "I'm, you're, they'll, it's, we'd, ISN'T, o'clock",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "",
]


@pytest.fixture(scope="module")
def reference(gguf_reference) -> ReferenceBPE:
    meta = gguf_reference[0]
    return ReferenceBPE(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"], meta["tokenizer.ggml.token_type"])


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_reference_bpe(default_loaded, reference, text):
    ids = default_loaded.tokenizer.encode(text, add_special_tokens=False)
    assert ids == reference.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(default_loaded, text):
    tok = default_loaded.tokenizer
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_reference_is_a_real_check(reference):
    # The reference can disagree: these are facts of this vocabulary that a
    # wrong pre-tokenizer (e.g. digits not split) or no merges would break.
    assert reference.encode("12345") == [33, 34, 35, 36, 37]
    assert reference.encode(" world") == [905]
    assert reference.encode("<|im_end|>") == [2]
    assert ReferenceBPE(["a", "b", "ab"], [], [1, 1, 1]).encode("ab") == [0, 1]


def test_control_tokens_are_single_and_special(default_loaded):
    tok = default_loaded.tokenizer
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert tok.eos_token_id == 2
    assert 2 in tok.eos_token_ids


def test_chat_template_from_gguf(default_loaded):
    prompt = default_loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_no_bos_added(default_loaded):
    # The GGUF says add_bos_token = false; SmolLM2's chat template starts with <|im_start|>.
    assert default_loaded.tokenizer.encode("Hi") == default_loaded.tokenizer.encode("Hi", add_special_tokens=False)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_other_pre_tokenizers_split_like_their_regex(pre):
    """The splits for Llama-3 / Qwen2 GGUFs: same pieces as Python's `regex` on llama.cpp's pattern."""
    import regex
    from tokenizers import pre_tokenizers

    from tests.models.gguf_reference import _byte_chars
    from worker.models.gguf_tokenizer import _PRE_TOKENIZERS, _pre_tokenizer

    pattern = _PRE_TOKENIZERS[pre][1]
    assert pattern is not None
    chars = _byte_chars()
    for text in TEXTS[2:10]:
        got = [piece for piece, _ in _pre_tokenizer(pre, pre_tokenizers).pre_tokenize_str(text)]
        want = ["".join(chars[b] for b in m.encode()) for m in regex.findall(pattern, text)]
        assert got == want, text
