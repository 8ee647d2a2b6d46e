"""Raw prompts (legacy completions): text or token ids as the model's input,
with no chat template — and fill-in-the-middle where the model has FIM tokens.
"""

from __future__ import annotations

from typing import Any

from .prompt import Prompt, PromptError

# Fill-in-the-middle special tokens by model family, as (prefix, suffix,
# middle), laid out prefix-suffix-middle: the model writes the middle.
FIM_TOKENS: tuple[tuple[str, str, str], ...] = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder, Granite code
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, CodeGemma
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
)


def fim_tokens(tokenizer: Any) -> tuple[str, str, str] | None:
    """The model's FIM token set, if its vocabulary has a whole one."""
    vocab = tokenizer.get_vocab()
    return next((t for t in FIM_TOKENS if all(s in vocab for s in t)), None)


def render_raw(tokenizer: Any, prompt: str | list[int], suffix: str | None, *, vocab_size: int) -> Prompt:
    """The token ids of a raw prompt. Text is encoded as the tokenizer does
    by default (a BOS where the model expects one); ids are used as given."""
    if isinstance(prompt, list):
        if suffix is not None:
            raise PromptError("`suffix` needs a text prompt", param="suffix")
        bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise PromptError(f"token id {bad} is outside this model's vocabulary (0..{vocab_size - 1})", param="prompt",
                              code="invalid_value")
        ids = list(prompt)
    elif suffix is not None:
        fim = fim_tokens(tokenizer)
        if fim is None:
            raise PromptError("this model has no fill-in-the-middle tokens, so `suffix` cannot be used", param="suffix",
                              code="unsupported_value")
        pre, suf, mid = fim
        ids = list(tokenizer.encode(f"{pre}{prompt}{suf}{suffix}{mid}"))
    else:
        ids = list(tokenizer.encode(prompt))
    if not ids:  # "" starts a new document, as OpenAI's default prompt <|endoftext|> does
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise PromptError("the prompt is empty", param="prompt")
        ids = [start]
    return Prompt(token_ids=ids, starts_in_reasoning=False)


def untrimmed(detokenizer: Any) -> Any:
    """mlx-lm's streaming detokenizers drop a leading space from the first
    text, right after a chat template's "assistant\n" but wrong after a raw
    prompt: "The capital of France is" must continue with " Paris"."""
    if hasattr(detokenizer, "trim_space"):  # SentencePiece
        detokenizer.trim_space = False
    elif hasattr(detokenizer, "_maybe_trim_space"):  # byte-level BPE
        detokenizer._maybe_trim_space = lambda text: text
    return detokenizer
