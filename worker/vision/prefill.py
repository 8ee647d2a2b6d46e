"""Prefill one vision prompt into a KV cache that decodes like a text prompt.

The vision tower and the embedding merge run once, on the media thread
(``encode``); the language model then consumes the prompt embeddings in
chunks on the compute thread (one chunk per loop turn, so running text
streams keep flowing). All but the last prompt token go in
here; the last one is handed to the shared batch, whose first step
produces the first completion token.

mrope models place image tokens on a 2-D grid, so the positions after an
image run behind the token count by ``delta`` (``rope_deltas``). The
batch only knows "position = tokens in the cache". Rotary embeddings
compose (R(a)·R(b) = R(a+b), per frequency pair), so rotating every cached
key once by ``-delta`` makes the cache exactly equivalent to one whose
next position is its length: relative distances between later queries and
all cached keys are unchanged. After that the sequence is, to the batch,
an ordinary text sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import mlx.core as mx


class VisionModelError(RuntimeError):
    """This mlx-vlm architecture lacks what batched vision decoding needs."""


@dataclass
class PrefillJob:
    input_ids: mx.array  # (1, L), evaluated
    embeds: mx.array | None  # (1, L, hidden): text embeddings with the image features merged in
    position_ids: mx.array | None  # (3, 1, L) for mrope models, else None (the cache offset is right)
    delta: int = 0  # mrope: next position minus prompt length (<= 0)
    cache: list[Any] = field(default_factory=list)
    done_tokens: int = 0  # prompt tokens already in the cache

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def remaining(self) -> int:
        return self.length - 1 - self.done_tokens  # the last token goes to the batch


class VisionPrefiller:
    def __init__(self, vlm: Any, make_cache: Any):
        self.vlm = vlm
        self.lm = vlm.language_model
        self.make_cache = make_cache
        inner = getattr(self.lm, "model", None)
        # Running the transformer without the lm_head skips a vocab-sized
        # matmul per prompt token (the logits of prompt tokens are unused).
        self._body = inner if inner is not None and hasattr(inner, "embed_tokens") else None

    def encode(self, input_ids: mx.array, pixel_values: mx.array | None, extra: dict[str, Any]) -> PrefillJob:
        """Vision tower + embedding merge + position ids, evaluated. Runs on
        the media thread (its own MLX stream), so the compute loop keeps
        stepping the batch meanwhile; everything handed back is evaluated,
        as MLX arrays may not cross threads unevaluated."""
        feats = self.vlm.get_input_embeddings(input_ids, pixel_values, **extra)
        position_ids = getattr(feats, "position_ids", None)
        if position_ids is not None and position_ids.ndim != 3:
            position_ids = None
        deltas = getattr(feats, "rope_deltas", None)
        mx.eval(input_ids, feats.inputs_embeds, *([position_ids] if position_ids is not None else []),
                *([deltas] if isinstance(deltas, mx.array) else []))
        delta = int(cast(int, deltas.reshape(-1)[0].item())) if isinstance(deltas, mx.array) and deltas.size else 0
        return PrefillJob(input_ids, feats.inputs_embeds, position_ids, delta)

    def step(self, job: PrefillJob, chunk: int) -> bool:
        """Compute thread: prefill up to ``chunk`` more tokens; True when only
        the last is left."""
        if not job.cache:
            job.cache = self.make_cache()
        n = min(chunk, job.remaining)
        if n > 0:
            assert job.embeds is not None, "prefill after finish"
            a, b = job.done_tokens, job.done_tokens + n
            kwargs: dict[str, Any] = {"inputs_embeds": job.embeds[:, a:b], "cache": job.cache}
            if job.position_ids is not None:
                kwargs["position_ids"] = job.position_ids[:, :, a:b]
            if self._body is not None:
                self._body(job.input_ids[:, a:b], **kwargs)
            else:
                self.lm(job.input_ids[:, a:b], **kwargs)
            mx.eval([c.state for c in job.cache])
            job.done_tokens = b
        return job.remaining <= 0

    def finish(self, job: PrefillJob) -> tuple[list[Any], int]:
        """The cache (keys re-rotated by -delta) and the last prompt token."""
        if job.delta:
            shift_keys(self.lm, job.cache, -job.delta)
        job.embeds = None  # free the prompt embeddings now
        return job.cache, int(cast(int, job.input_ids[0, -1].item()))


def shift_keys(lm: Any, cache: list[Any], shift: int) -> None:
    """Rotate every cached key by ``shift`` positions, with the model's own rope."""
    rotary = _rotary_of(lm)
    if getattr(rotary, "attention_scaling", 1.0) != 1.0:
        raise VisionModelError("rope with attention scaling cannot be re-rotated exactly")
    for c in cache:
        keys = c.keys[..., : c.offset, :]
        B, _, L, _ = keys.shape
        pos = mx.full((3, B, L), shift, dtype=mx.int32)
        rotated = rotary.apply_rotary(keys, keys, pos)[1]
        c.keys[..., : c.offset, :] = rotated.astype(c.keys.dtype)
    mx.eval([c.keys for c in cache])


def _rotary_of(lm: Any) -> Any:
    layers = getattr(lm, "layers", None) or []
    attn = getattr(layers[0], "self_attn", None) if layers else None
    rotary = getattr(attn, "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "apply_rotary"):
        raise VisionModelError(
            f"{type(lm).__module__}: no mrope rotary embedding found; batched vision decode is not supported"
        )
    return rotary
