"""Read a GGUF file's header and decide, before any conversion work, whether we can.

A small parser of our own (the format is simple) reads the 100k-entry
vocabulary in well under a second, where the `gguf` package's reader takes
several on this machine. Tensors are then read straight from the file
(`GGUFInfo.raw`) and decoded by `gguf_quants`; `mx.load` is not used, as it
silently turns types it has no MLX form for (BF16, K-quants) into float16.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .gguf_quants import SUPPORTED_TYPES, type_name

GGUF_MAGIC = b"GGUF"
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
        return type_name(self.type_id)

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        kind = SUPPORTED_TYPES[self.type_id]
        return self.count // kind.block * kind.nbytes


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

    def raw(self, name: str) -> Any:
        """A tensor's bytes as a read-only uint8 NumPy view of the file (nothing copied yet)."""
        import numpy as np

        t = self.tensors[name]
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=t.offset, shape=(t.nbytes,))


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
    from .gguf_archs import architecture

    name = info.path.name
    architecture(info.architecture, name)
    bad = {n: t.type_name for n, t in info.tensors.items() if t.type_id not in SUPPORTED_TYPES}
    if bad:
        kinds = sorted(set(bad.values()))
        supported = ", ".join(t.name for t in SUPPORTED_TYPES.values())
        raise ModelLoadError(
            f"{name}: tensor type {', '.join(kinds)} is not supported (e.g. {next(iter(bad))!r}); "
            f"supported: {supported} - use a GGUF of this model in one of these types"
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
        per_block = SUPPORTED_TYPES[t.type_id].block
        if t.shape and t.shape[-1] % per_block:
            raise ModelLoadError(
                f"{info.path.name}: tensor {name!r} ({t.type_name}) has a row length not divisible by {per_block}"
            )
        if t.offset + t.nbytes > size:
            raise ModelLoadError(
                f"{info.path} is truncated: tensor {name!r} extends past the end of the file; download it again"
            )
