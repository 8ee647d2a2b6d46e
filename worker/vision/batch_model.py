"""A vision model's language half, shaped the way mlx-lm's BatchGenerator calls models.

BatchGenerator calls ``model(tokens, cache=per_layer_caches)`` and expects
logits; it makes caches from ``model.layers`` (or ``model.make_cache()``).
An mlx-vlm model returns a ``LanguageModelOutput``, and mrope models
(Qwen2-VL, Qwen2.5-VL, ...) keep per-generation rope state on the module,
which breaks as soon as two sequences share a batch. This view passes
explicit per-row positions instead, so text requests to a vision model and
the decode phase of vision requests (see ``prefill.py``, which makes a
vision sequence's cache look like a text one) batch together.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx


class BatchView:
    """Callable like an mlx-lm model: ``view(tokens, cache=...) -> logits``."""

    def __init__(self, vlm: Any):
        self.vlm = vlm
        self.lm = vlm.language_model
        # mrope models build (3, B, L) position ids themselves from model
        # state unless we hand them over; for plain-rope models the layers
        # read ``cache.offset`` (per row under batching) like mlx-lm's.
        self.mrope = hasattr(self.lm, "get_rope_index")

    @property
    def layers(self) -> list[Any]:
        return self.lm.layers

    def make_cache(self) -> list[Any]:
        make = getattr(self.lm, "make_cache", None)
        if make is not None:
            return make()
        from mlx_lm.models.cache import KVCache

        return [KVCache() for _ in self.lm.layers]

    def __call__(self, tokens: mx.array, cache: list[Any] | None = None, **_: Any) -> mx.array:
        if not self.mrope:
            return _logits(self.lm(tokens, cache=cache))
        B, L = tokens.shape
        offset = cache[0].offset if cache else 0
        if isinstance(offset, mx.array):  # BatchKVCache: one offset per row
            start = offset.reshape(-1, 1)
        else:
            start = mx.full((B, 1), offset, dtype=mx.int32)
        positions = start + mx.arange(L, dtype=mx.int32)[None, :]
        # Text tokens have equal time/height/width positions.
        position_ids = mx.broadcast_to(positions[None], (3, B, L))
        return _logits(self.lm(tokens, cache=cache, position_ids=position_ids))


def _logits(out: Any) -> mx.array:
    return out.logits if hasattr(out, "logits") else out
