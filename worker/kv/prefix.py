"""The system-prefix cache: the KV of the rendered system prompt, on disk.

Files (the seed's layout, in ``--prompt-cache-dir``):
``<model>.safetensors`` (the KV), ``<model>.safetensors.len`` (token count),
``<model>.safetensors.hash`` (SHA-256 over the token ids). Loaded at
start-up, replaced when a request brings a different system prompt. A new
conversation whose system prompt matches starts from it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import BinaryIO

import mlx.core as mx
from mlx_lm.models.cache import save_prompt_cache

from .files import read_regular, tokens_hash, write_atomic
from .validate import Reference, parse_cache
from .views import Cache, prefix_view

log = logging.getLogger("kmlx.worker.prefix")


class PrefixCache:
    def __init__(self, directory: Path, model_id: str):
        self.directory = directory
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", model_id).lstrip(".") or "model"
        self.path = directory / f"{stem}.safetensors"
        self.tokens: list[int] = []
        self.cache: Cache | None = None
        self.saves = 0

    @property
    def files(self) -> list[Path]:
        return [self.path, Path(f"{self.path}.len"), Path(f"{self.path}.hash")]

    def load(self, reference: Reference | None = None, max_bytes: int = 4 << 30) -> None:
        """Adopt the files on disk if they are whole, consistent and fit the
        model (read and evaluated now: nothing is read from them later)."""
        try:
            raw = [read_regular(p, max_bytes if p == self.path else 1 << 10) for p in self.files]
            if any(r is None for r in raw):
                return
            cache, meta = parse_cache(raw[0], reference)  # type: ignore[arg-type]
            tokens = json.loads(meta["tokens"])
            ok = (
                isinstance(tokens, list)
                and raw[2].decode().strip() == tokens_hash(tokens)  # type: ignore[union-attr]
                and int(raw[1].decode().strip()) == len(tokens)  # type: ignore[union-attr]
                and cache[0].offset == len(tokens)
            )
        except Exception as exc:  # damaged files are rebuilt, never trusted
            log.warning("ignoring prefix cache %s: %s", self.path, exc)
            return
        if not ok:
            log.warning("ignoring prefix cache %s: its .len/.hash do not match", self.path)
            return
        self.tokens, self.cache = tokens, cache
        log.info("loaded system-prefix cache (%d tokens) from %s", len(tokens), self.path)

    def match(self, prompt: list[int], system_len: int) -> Cache | None:
        """A view of the cached prefix if it is exactly this prompt's system part."""
        n = len(self.tokens)
        if self.cache is None or n == 0 or n != system_len or n >= len(prompt):
            return None
        if prompt[:n] != self.tokens:
            return None
        return prefix_view(self.cache, n)

    def offer(self, tokens: list[int], cache: Cache, system_len: int) -> None:
        """After a finished request: keep its system part if it is new."""
        if system_len <= 0 or tokens[:system_len] == self.tokens:
            return
        view = prefix_view(cache, system_len)
        if view is None:
            return
        prefix_tokens = tokens[:system_len]
        try:
            self._write(prefix_tokens, view)
        except Exception as exc:  # a full disk must not fail the request (nor the batch it finished in)
            log.warning("could not save the system-prefix cache: %s", exc)
            return
        self.tokens, self.cache = prefix_tokens, view
        self.saves += 1

    def _write(self, tokens: list[int], cache: Cache) -> None:
        # Materialise exactly the prefix (a view may share longer arrays).
        sliced = []
        for c in cache:
            k, v = c.keys[..., : c.offset, :], c.values[..., : c.offset, :]
            mx.eval(k, v)
            c2 = type(c)()
            c2.keys, c2.values, c2.offset = k, v, c.offset
            sliced.append(c2)

        def data(f: BinaryIO) -> None:
            save_prompt_cache(f, sliced, {"tokens": json.dumps(tokens)})  # type: ignore[arg-type]

        length, digest = str(len(tokens)).encode(), tokens_hash(tokens).encode()
        # All three are written before any is renamed; a crash between the
        # renames leaves files that fail the consistency check on load.
        write_atomic(self.directory, {
            self.path.name: data,
            self.files[1].name: lambda f: f.write(length),
            self.files[2].name: lambda f: f.write(digest),
        })
        log.info("saved system-prefix cache (%d tokens) to %s", len(tokens), self.path)
