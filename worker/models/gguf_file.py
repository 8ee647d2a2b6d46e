"""Read a GGUF file's header and decide, before any conversion work, whether we can.

`mx.load` reads the tensors, but it silently dequantizes types it has no MLX
form for (BF16, K-quants) to float16 and does not report tensor types, so the
header is parsed here. A small parser of our own (the format is simple) reads
the 100k-entry vocabulary in well under a second, where the `gguf` package's
reader takes several on this machine.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)
# ggml type id -> (name, elements per block, bytes per block). Types mx.load
# turns into MLX arrays without loss: floats as they are, Q4_0/Q4_1/Q8_0 as MLX
# affine-quantized triples (group size 32); plus BF16, which we read ourselves.
SUPPORTED_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34),
    30: ("BF16", 1, 2),  # read by us: mx.load would turn it into float16
}
_OTHER_TYPES = {
    6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K",
    15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}
# GGUF value type id -> struct format of a scalar
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass
class TensorInfo:
    type_id: int
    shape: tuple[int, ...]  # numpy order: rows first
    offset: int  # absolute, in the file

    @property
    def type_name(self) -> str:
        known = SUPPORTED_TYPES.get(self.type_id)
        return known[0] if known else _OTHER_TYPES.get(self.type_id, f"type#{self.type_id}")


@dataclass
class GGUFInfo:
    path: Path
    architecture: str
    meta: dict[str, Any]  # every key/value as plain Python values
    tensors: dict[str, TensorInfo]

    def get(self, key: str, default: Any = None) -> Any:
        return self.meta.get(key, default)

    def arch(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped key, e.g. arch("context_length")."""
        return self.meta.get(f"{self.architecture}.{key}", default)

    @property
    def tensor_types(self) -> dict[str, str]:
        return {name: t.type_name for name, t in self.tensors.items()}


def read_gguf(path: Path) -> GGUFInfo:
    """Parse and validate; ModelLoadError names the first thing we cannot handle."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                raise ModelLoadError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                meta, tensors = _Parser(buf).header()
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except struct.error as exc:
        raise ModelLoadError(f"{path} is truncated or corrupt (its GGUF header is cut short); download it again") from exc
    except (IndexError, ValueError, OverflowError, MemoryError) as exc:
        raise ModelLoadError(f"{path} is truncated or corrupt (bad GGUF header: {exc}); download it again") from exc
    info = GGUFInfo(path, str(meta.get("general.architecture", "")), meta, tensors)
    _check_supported(info)
    _check_complete(info)
    return info


class _Parser:
    def __init__(self, buf: Any) -> None:
        self.buf, self.pos = buf, 4

    def take(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return value[0] if len(value) == 1 else value

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise ValueError("string runs past the end of the file")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.take("I"), self.take("Q")
            if itype in _SCALARS:  # numbers: one struct call, not one per item
                fmt = f"<{count}{_SCALARS[itype]}"
                size = struct.calcsize(fmt)
                if self.pos + size > len(self.buf):
                    raise ValueError("array runs past the end of the file")
                values = list(struct.unpack_from(fmt, self.buf, self.pos))
                self.pos += size
                return values
            return [self.value(itype) for _ in range(count)]
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        raise ValueError(f"unknown GGUF value type {vtype}")

    def header(self) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
        version = self.take("I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = self.take("Q"), self.take("Q")
        meta = {}
        for _ in range(n_kv):
            key = self.string()
            meta[key] = self.value(self.take("I"))
        raw = []
        for _ in range(n_tensors):
            name = self.string()
            dims = [self.take("Q") for _ in range(self.take("I"))]
            raw.append((name, self.take("I"), tuple(reversed(dims)), self.take("Q")))
        align = int(meta.get("general.alignment", 32))
        start = (self.pos + align - 1) // align * align
        tensors = {name: TensorInfo(t, shape, start + off) for name, t, shape, off in raw}
        return meta, tensors


def _check_supported(info: GGUFInfo) -> None:
    name = info.path.name
    if info.architecture not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{name}: GGUF architecture {info.architecture or '(none)'!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}); use an MLX or Hugging Face copy of this model"
        )
    bad = {n: t.type_name for n, t in info.tensors.items() if t.type_id not in SUPPORTED_TYPES}
    if bad:
        kinds = sorted(set(bad.values()))
        supported = ", ".join(v[0] for v in SUPPORTED_TYPES.values())
        raise ModelLoadError(
            f"{name}: tensor type {', '.join(kinds)} is not supported (e.g. {next(iter(bad))!r}); "
            f"supported: {supported} - use a Q4_0, Q4_1, Q8_0, F16 or BF16 GGUF of this model"
        )
    tokenizer = info.get("tokenizer.ggml.model")
    if tokenizer not in ("gpt2", "llama"):
        raise ModelLoadError(
            f"{name}: tokenizer type {tokenizer!r} is not supported "
            "(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece BPE)"
        )


def _check_complete(info: GGUFInfo) -> None:
    size = info.path.stat().st_size
    for name, t in info.tensors.items():
        _, per_block, block_bytes = SUPPORTED_TYPES[t.type_id]
        count = 1
        for d in t.shape:
            count *= d
        if t.shape and t.shape[-1] % per_block:
            raise ModelLoadError(f"{info.path.name}: tensor {name!r} has a row length not divisible by {per_block}")
        if t.offset + count // per_block * block_bytes > size:
            raise ModelLoadError(
                f"{info.path} is truncated: tensor {name!r} extends past the end of the file; download it again"
            )


def read_bf16(info: GGUFInfo, name: str) -> Any:
    """A BF16 tensor as an MLX bfloat16 array, bit for bit."""
    import mlx.core as mx
    import numpy as np

    t = info.tensors[name]
    count = int(np.prod(t.shape)) if t.shape else 1
    bits = np.fromfile(info.path, dtype="<u2", count=count, offset=t.offset).astype(np.uint32) << 16
    return mx.array(bits.view(np.float32).reshape(t.shape)).astype(mx.bfloat16)
