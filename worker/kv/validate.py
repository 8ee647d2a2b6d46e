"""Turn a saved cache's bytes into a cache that is safe to join the batch.

A cache that enters mlx-lm's shared batch is merged with every running
sequence's cache; a wrong shape, dtype or offset there fails the whole
batch, not one request. So a loaded cache is built from bytes already in
memory, every array is evaluated here (MLX is lazy: an unevaluated array
would be read later, inside the batch), and each layer is compared with a
reference cache the model itself produced (``Reference``). Anything that
does not match raises ``CacheFileError`` before the cache is used.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, cast

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import cache as mlx_cache

from .views import Cache

# Only these cache classes may be instantiated from a file's metadata.
ALLOWED_CLASSES = ("KVCache", "RotatingKVCache", "ArraysCache", "QuantizedKVCache", "ChunkedKVCache")
# Classes whose arrays grow along axis 2 (B, heads, tokens, dim) and carry an offset.
_SEQUENCE_CLASSES = {"KVCache", "RotatingKVCache", "QuantizedKVCache", "ChunkedKVCache"}


class CacheFileError(Exception):
    """A file that cannot be used; ``status`` is the HTTP status to report."""

    def __init__(self, message: str, status: int = 422, code: str = "cache_file_corrupt"):
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def damaged(self) -> bool:
        """The file itself is bad (quarantine it), not merely another model's."""
        return self.code == "cache_file_corrupt"


@dataclass(frozen=True)
class Layer:
    kind: str
    arrays: tuple[tuple[Any, tuple[int, ...]], ...]  # (dtype, shape) of each state array
    scalars: tuple[Any, ...]  # the non-array parts of the state (offset, window sizes, ...)


@dataclass(frozen=True)
class Reference:
    """What this model's caches look like: one ``Layer`` per layer, and the
    vocabulary size (saved token ids must be below it)."""

    layers: tuple[Layer, ...]
    vocab_size: int


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    return cast("list[tuple[str, Any]]", tree_flatten(tree))


def describe(cache: Cache) -> tuple[Layer, ...]:
    out = []
    for c in cache:
        leaves = [v for _, v in _leaves(c.state)] if c.state is not None else []
        arrays = tuple((a.dtype, tuple(a.shape)) for a in leaves if isinstance(a, mx.array))
        scalars = tuple(v for v in leaves if not isinstance(v, mx.array))
        out.append(Layer(type(c).__name__, arrays, scalars))
    return tuple(out)


def reference_for(model: Any) -> Reference:
    """Run one token through a fresh cache: the model's own layout."""
    cache = mlx_cache.make_prompt_cache(model)
    logits = model(mx.array([[0]]), cache=cache)
    mx.eval(logits, *[a for c in cache for _, a in _leaves(c.state) if isinstance(a, mx.array)])
    return Reference(describe(cache), int(logits.shape[-1]))


def parse_cache(data: bytes, reference: Reference | None) -> tuple[Cache, dict[str, str]]:
    """Bytes of a prompt-cache safetensors file -> an evaluated, checked
    cache, and the metadata it was saved with."""
    try:
        loaded = mx.load(io.BytesIO(data), format="safetensors", return_metadata=True)
        arrays, raw_meta = cast("tuple[dict[str, Any], dict[str, str]]", loaded)
        classes = [v for k, v in sorted(raw_meta.items()) if k.startswith("1.")]
        unknown = sorted(set(classes) - set(ALLOWED_CLASSES))
        if unknown:
            raise CacheFileError(f"cache file names unknown cache types {unknown}")
        metadata, classes, scalars = tree_unflatten(list(raw_meta.items()))
        for pos, kind in scalars[1:]:
            value = arrays[pos]
            if kind == "scalar":
                arrays[pos] = value.item()
            elif kind == "none":
                arrays[pos] = None
            else:
                raise CacheFileError(f"cache file has a state value of unknown type {kind!r}")
        states = tree_unflatten(list(arrays.items()))
        if not isinstance(states, list) or not isinstance(metadata, dict) or len(states) != len(classes):
            raise CacheFileError("cache file's layers do not match its class list")
        cache = [getattr(mlx_cache, name).from_state(state) for name, state in zip(classes, states)]
        # Read every byte now, while the data is ours and nothing else depends on it.
        mx.eval(*[a for c in cache for _, a in _leaves(c.state) if isinstance(a, mx.array)])
    except CacheFileError:
        raise
    except Exception as exc:  # whatever MLX or a hostile layout raises
        raise CacheFileError(f"cache file is unreadable: {exc}") from None
    check(cache, reference)
    return cache, metadata


def check(cache: Cache, reference: Reference | None) -> None:
    """Raise CacheFileError unless ``cache`` could have come from this model."""
    if not cache:
        raise CacheFileError("cache file holds no layers")
    layers = describe(cache)
    if reference is not None and len(layers) != len(reference.layers):
        raise CacheFileError(f"cache file has {len(layers)} layers; this model has {len(reference.layers)}")
    offsets = set()
    for i, (c, got) in enumerate(zip(cache, layers)):
        ref = reference.layers[i] if reference is not None else None
        _check_layer(i, c, got, ref)
        if got.kind in _SEQUENCE_CLASSES:
            offsets.add(c.offset)
    if len(offsets) > 1:
        raise CacheFileError(f"cache file's layers disagree on the token count ({sorted(offsets)})")


def _check_layer(i: int, c: Any, got: Layer, ref: Layer | None) -> None:
    where = f"cache file layer {i}"
    if ref is not None:
        if got.kind != ref.kind:
            raise CacheFileError(f"{where} is a {got.kind}; this model uses {ref.kind}")
        if len(got.arrays) != len(ref.arrays):
            raise CacheFileError(f"{where} holds {len(got.arrays)} arrays, not {len(ref.arrays)}")
        for (dtype, shape), (rdtype, rshape) in zip(got.arrays, ref.arrays):
            if dtype != rdtype:
                raise CacheFileError(f"{where} is {dtype}; this model's cache is {rdtype}")
            grows = got.kind in _SEQUENCE_CLASSES
            if len(shape) != len(rshape) or any(a != b for ax, (a, b) in enumerate(zip(shape, rshape)) if not (grows and ax == 2)):
                raise CacheFileError(f"{where} has shape {shape}; this model's is {rshape}")
    if got.kind not in _SEQUENCE_CLASSES:
        return
    if any(isinstance(s, bool) or not isinstance(s, int) for s in got.scalars):
        raise CacheFileError(f"{where} has a non-integer offset or size")
    if not got.arrays:
        raise CacheFileError(f"{where} is empty")
    length = got.arrays[0][1][2] if len(got.arrays[0][1]) == 4 else -1
    if any(len(s) != 4 or s[0] != 1 or s[2] != length for _, s in got.arrays):
        raise CacheFileError(f"{where} is not one sequence of {length} tokens")
    offset = c.offset
    if got.kind == "RotatingKVCache":
        keep, max_size, idx = c.keep, c.max_size, c._idx
        if ref is not None and (keep, max_size) != (ref.scalars[1], ref.scalars[2]):
            raise CacheFileError(f"{where} has window {max_size} (keep {keep}); this model's is {ref.scalars[2]}")
        if not (offset > 0 and min(offset, max_size) <= length <= max_size and 0 <= idx <= length):
            raise CacheFileError(f"{where} has inconsistent window positions")
    elif not 0 < offset <= length:
        raise CacheFileError(f"{where} claims {offset} tokens but holds {length}")
