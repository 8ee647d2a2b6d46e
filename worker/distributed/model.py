"""Each rank's share of the model, and the forward pass every rank runs.

Two ways to split a model, as mlx-lm's own server does:

- **tensor** (``split_tensor``): every layer's attention heads and MLP
  columns are divided among the ranks by the model's own ``shard()``
  (mlx-lm), with an all-reduce after the attention and the MLP. Needs the
  heads to divide evenly. Fast on a low-latency link (Thunderbolt).
- **pipeline** (``split_pipeline``): each rank keeps a contiguous run of
  layers; the hidden state travels rank to rank. Any number of heads; one
  send per step and rank boundary. mlx-lm's models that implement
  ``pipeline()`` use it; llama-style models (llama, mistral, qwen2, qwen3)
  are split here. As in mlx-lm, rank 0 holds the *last* layers.

``RankModel`` is what the batch calls on every rank. Only rank 0 computes
logits (it samples; ``leader.py`` hands its tokens to the others); the
others return a placeholder that depends on their part of the forward, so
evaluating it runs their share. A forward the batch did not ask for (the
prompt cache's layout probe, a warm-up) is announced to the other ranks
first (``ops.Forward``) and evaluated whole at once on every rank, so every
rank runs the same collectives in the same order.
"""

from __future__ import annotations

from typing import Any

from .group import Parallelism

GENERIC_PIPELINE = ("llama", "mistral", "qwen2", "qwen3")  # embed -> full-attention layers -> norm -> head


class SplitError(ValueError):
    """The model cannot be split this way (the message says what to do instead)."""


def split(model: Any, group: Any, parallelism: Parallelism) -> tuple[int, int] | None:
    """Keep only this rank's share of ``model`` (before its weights are
    evaluated, so a rank never materialises the others' share). Returns the
    layers this rank runs when kmlx's own pipeline split is used (``RankModel``)."""
    if parallelism == "tensor":
        split_tensor(model, group)
        return None
    return split_pipeline(model, group)


def split_tensor(model: Any, group: Any) -> None:
    n = group.size()
    if not hasattr(model, "shard"):
        raise SplitError(f"{_kind(model)} has no tensor-parallel split in mlx-lm; start the worker with --pipeline")
    for i, layer in enumerate(getattr(model, "layers", [])):
        attn = getattr(layer, "self_attn", None)
        for name in ("n_heads", "n_kv_heads", "num_heads", "num_key_value_heads"):
            heads = getattr(attn, name, None)
            if isinstance(heads, int) and heads % n:
                raise SplitError(
                    f"{_kind(model)} layer {i} has {heads} {name.replace('_', ' ')}, which {n} ranks cannot share "
                    "evenly; start the worker with --pipeline"
                )
    model.shard(group)


def split_pipeline(model: Any, group: Any) -> tuple[int, int] | None:
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "pipeline"):
        inner.pipeline(group)  # mlx-lm's own (PipelineMixin): sends, receives and gathers itself
        return None
    kind = getattr(getattr(model, "args", None), "model_type", None)
    if kind not in GENERIC_PIPELINE or inner is None or not hasattr(inner, "layers"):
        raise SplitError(f"{_kind(model)} cannot be split into a pipeline here (kmlx splits {', '.join(GENERIC_PIPELINE)} "
                         "and mlx-lm's models with pipeline()); try tensor parallelism (no --pipeline)")
    if any(getattr(layer, "use_sliding", False) for layer in inner.layers):
        raise SplitError(f"{_kind(model)} has sliding-window layers, which the pipeline split does not handle")
    start, end = stage_bounds(len(inner.layers), group.rank(), group.size())
    inner.layers = inner.layers[start:end]  # the other stages' weights are dropped before they load
    return start, end


def stage_bounds(layers: int, rank: int, size: int) -> tuple[int, int]:
    """Layers ``[start, end)`` of ``rank``: an even split (lower ranks get the
    extra ones), rank ``size - 1`` first, rank 0 last (mlx-lm's order)."""
    if layers < size:
        raise SplitError(f"the model has {layers} layers, fewer than the {size} ranks")
    base, extra = divmod(layers, size)
    counts = [base + (1 if r < extra else 0) for r in range(size)]
    start = sum(counts[rank + 1 :])
    return start, start + counts[rank]


class RankModel:
    """The model as the batch sees it on one rank (attributes pass through)."""

    def __init__(self, model: Any, group: Any, *, stage: tuple[int, int] | None = None, on_free_forward: Any = None):
        self.model = model
        self.group = group
        self.rank = group.rank()
        self.size = group.size()
        self.stage = stage  # layers [start, end) of kmlx's own pipeline split; None otherwise
        # Rank 0: called before a forward the batch did not ask for (ops.Forward).
        self.on_free_forward = on_free_forward
        self.in_batch = False  # rank 0: set by the replicated batch around its own calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, inputs: Any, cache: Any = None, input_embeddings: Any = None) -> Any:
        import mlx.core as mx

        if input_embeddings is not None:
            raise NotImplementedError("input embeddings (vision) are not supported by a distributed worker")
        free = self.rank == 0 and not self.in_batch and self.on_free_forward is not None
        if free:  # the others run it too (ops.Forward), and everything is evaluated on every rank
            self.on_free_forward(inputs)
        out = self._forward(inputs, cache)
        if free:
            mx.eval(out, [c.state for c in cache] if cache else [])
        return out

    def _forward(self, inputs: Any, cache: Any) -> Any:
        if self.stage is not None:
            hidden = self._stage(inputs, cache)
        elif self.rank == 0:
            return self.model(inputs, cache=cache)
        else:
            hidden = self.model.model(inputs, cache)
        if self.rank == 0:
            return self._head(hidden)
        return hidden[..., :1] * 0  # logits nobody reads; evaluating them runs this rank's share

    def _stage(self, inputs: Any, cache: Any) -> Any:
        """This rank's layers of a generic pipeline: receive the hidden state
        from the rank before (rank + 1), run the layers, send it on (rank - 1)."""
        import mlx.core as mx
        from mlx_lm.models.base import create_attention_mask

        inner = self.model.model
        h = inner.embed_tokens(inputs)
        if cache is None:
            cache = [None] * len(inner.layers)
        mask = create_attention_mask(h, cache[0])
        if self.rank < self.size - 1:
            h = mx.distributed.recv_like(h, self.rank + 1, group=self.group)
        for layer, c in zip(inner.layers, cache):
            h = layer(h, mask, cache=c)
        if self.rank > 0:
            h = mx.distributed.send(h, self.rank - 1, group=self.group)
            if cache[-1] is not None:  # a prefill evaluates only the caches: make them wait for the send
                cache[-1].keys = mx.depends(cache[-1].keys, h)
        return h

    def _head(self, hidden: Any) -> Any:
        if self.stage is None:  # rank 0 of a tensor split runs the whole model itself (above)
            raise AssertionError("only the pipeline's last stage applies the head here")
        inner = self.model.model
        h = inner.norm(hidden)
        if getattr(self.model.args, "tie_word_embeddings", False):
            return inner.embed_tokens.as_linear(h)
        return self.model.lm_head(h)


def _kind(model: Any) -> str:
    kind = getattr(getattr(model, "args", None), "model_type", None)
    return f"this model ({kind})" if kind else "this model"
