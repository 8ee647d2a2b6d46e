"""The model tests' tokenizer fixtures, for synthesizing GGUFs here too."""

from tests.models.conftest import default_gguf, small_tokenizer_meta, tokenizer_meta  # noqa: F401
