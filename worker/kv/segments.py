"""A model's KV cache cut into pieces the prefix tree can share.

mlx-lm keeps one cache object per layer. Two kinds matter here:

- **sequence layers** (``KVCache``): one key and one value row per token.
  Rows ``[a, b)`` can be cut out, stored once, and joined with the rows
  before them to rebuild the cache at any position — so a prefix shared by
  many prompts is stored once (``Segment``).
- **state layers** (everything else: ``RotatingKVCache`` windows,
  ``ArraysCache`` SSM / linear-attention state, ...): their state at token
  ``n`` cannot be derived from a later state. They are kept whole, as a
  ``Checkpoint`` taken at an exact position.

Everything stored is an independent, evaluated copy (``mx.contiguous``): a
slice would keep the whole batch buffer it came from alive. Rebuilt caches
are new objects that only read the stored arrays (mlx-lm's batch merge
copies them), so a stored piece is never changed by the request using it.

With ``bits`` (``--kv-bits``) sequence rows are stored quantized
(``mx.quantize`` per row and head, ``group_size`` values per scale) and
dequantized when a cache is rebuilt: the running batch itself stays in full
precision, because mlx-lm 0.32's ``BatchGenerator`` cannot merge a
``QuantizedKVCache`` (docs/prompt-caching.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache

Cache = list[Any]


def is_sequence_layer(c: Any) -> bool:
    return type(c) is KVCache


@dataclass(frozen=True)
class Layout:
    """Which layers of this model's cache are sequence layers."""

    sequence: tuple[bool, ...]

    @classmethod
    def of(cls, cache: Cache) -> Layout:
        return cls(tuple(is_sequence_layer(c) for c in cache))

    @property
    def has_state(self) -> bool:
        """Some layer can only be restored from a checkpoint."""
        return not all(self.sequence)

    def matches(self, cache: Cache) -> bool:
        return len(cache) == len(self.sequence) and all(is_sequence_layer(c) == s for c, s in zip(cache, self.sequence))


@dataclass
class Segment:
    """Rows ``[start, start + length)`` of every sequence layer: per layer
    ``(keys, values)``, or the quantized triples of both."""

    layers: list[tuple[mx.array, ...]]
    length: int
    nbytes: int


@dataclass
class Checkpoint:
    """The state layers' caches after exactly ``position`` tokens."""

    layers: list[Any]
    nbytes: int


class Codec:
    """How sequence rows are stored: as they are, or quantized."""

    def __init__(self, bits: int | None = None, group_size: int = 64):
        if bits is not None and bits not in (2, 3, 4, 5, 6, 8):
            raise ValueError(f"--kv-bits must be one of 2, 3, 4, 5, 6, 8, not {bits}")
        if group_size not in (32, 64, 128):
            raise ValueError(f"--kv-group-size must be 32, 64 or 128, not {group_size}")
        self.bits = bits
        self.group_size = group_size

    def encode(self, keys: mx.array, values: mx.array) -> tuple[mx.array, ...]:
        if self.bits is None:
            return mx.contiguous(keys), mx.contiguous(values)
        kq = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        vq = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        return (*kq, *vq)

    def join(self, parts: list[tuple[mx.array, ...]], dtype: Any) -> tuple[mx.array, mx.array]:
        """Rows of consecutive segments of one layer -> full keys, values."""
        # Always new array objects: the stored ones must never be written through.
        cat = [p[0][...] if len(parts) == 1 else mx.concatenate(list(p), axis=2) for p in zip(*parts)]
        if self.bits is None:
            return cat[0], cat[1]
        k = mx.dequantize(cat[0], cat[1], cat[2], group_size=self.group_size, bits=self.bits)
        v = mx.dequantize(cat[3], cat[4], cat[5], group_size=self.group_size, bits=self.bits)
        return k.astype(dtype), v.astype(dtype)


def _rows(a: mx.array, start: int, end: int) -> mx.array:
    return mx.contiguous(a[..., start:end, :])


def cut(cache: Cache, layout: Layout, start: int, end: int, codec: Codec) -> Segment:
    """An independent copy of rows ``[start, end)`` of ``cache``'s sequence layers."""
    layers = []
    for c, seq in zip(cache, layout.sequence):
        if seq:
            layers.append(codec.encode(c.keys[..., start:end, :], c.values[..., start:end, :]))
    return Segment(layers, end - start, _nbytes(layers))


def split(seg: Segment, at: int) -> tuple[Segment, Segment]:
    """Rows ``[0, at)`` and ``[at, length)`` of a stored segment, as copies
    (so evicting one half frees its memory)."""
    head = [tuple(_rows(a, 0, at) for a in layer) for layer in seg.layers]
    tail = [tuple(_rows(a, at, a.shape[2]) for a in layer) for layer in seg.layers]
    return Segment(head, at, _nbytes(head)), Segment(tail, seg.length - at, _nbytes(tail))


def checkpoint(cache: Cache, layout: Layout) -> Checkpoint:
    """Independent copies of ``cache``'s state layers."""
    layers = [_copy_layer(c, mx.contiguous) for c, seq in zip(cache, layout.sequence) if not seq]
    return Checkpoint(layers, sum(int(getattr(c, "nbytes", 0)) for c in layers))


def assemble(
    layout: Layout, codec: Codec, segments: list[Segment], length: int, state: Checkpoint | None, dtype: Any
) -> Cache:
    """A new cache holding the first ``length`` rows of ``segments`` (the
    path from the root) and, for state layers, ``state`` (taken at exactly
    ``length``)."""
    if layout.has_state and state is None:
        raise ValueError("a checkpoint is needed to rebuild this model's cache")
    rows: list[list[tuple[mx.array, ...]]] = [[] for _ in segments[0].layers] if segments else []
    left = length
    for seg in segments:
        take = min(left, seg.length)
        for i, layer in enumerate(seg.layers):
            rows[i].append(layer if take == seg.length else tuple(a[..., :take, :] for a in layer))
        left -= take
        if left == 0:
            break
    if left:
        raise ValueError(f"the segments hold {length - left} of {length} tokens")
    out: Cache = []
    seq_i = state_i = 0
    for seq in layout.sequence:
        if seq:
            c = KVCache()
            c.keys, c.values = codec.join(rows[seq_i], dtype)
            c.offset = length
            seq_i += 1
        else:
            c = _copy_layer(state.layers[state_i], lambda a: a[...])  # type: ignore[union-attr]
            state_i += 1
        out.append(c)
    return out


def _copy_layer(c: Any, copy_array: Any) -> Any:
    """A new cache object of ``c``'s class over (copies of) its arrays."""
    return type(c).from_state(_map_arrays(c.state, copy_array))


def _map_arrays(value: Any, fn: Any) -> Any:
    if isinstance(value, mx.array):
        return fn(value)
    if isinstance(value, list):
        return [_map_arrays(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(_map_arrays(v, fn) for v in value)
    return value


def _nbytes(layers: list[tuple[mx.array, ...]]) -> int:
    return sum(a.nbytes for layer in layers for a in layer)


def evaluate(*pieces: Segment | Checkpoint | None) -> None:
    """Compute the copies now, so nothing keeps the source buffers alive."""
    arrays: list[mx.array] = []
    for p in pieces:
        if isinstance(p, Segment):
            arrays += [a for layer in p.layers for a in layer]
        elif isinstance(p, Checkpoint):
            for c in p.layers:
                _map_arrays(c.state, arrays.append)
    if arrays:
        mx.eval(*arrays)
