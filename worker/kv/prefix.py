"""System prompts' KV on disk: several at once, keyed by a hash of their
tokens, least recently used removed past a size budget.

Each prefix is three files in ``--prompt-cache-dir`` (kamiwaza-mlx's
layout, one set per prefix): ``<model>.<hash16>.safetensors`` (the KV),
``….safetensors.len`` (token count) and ``….safetensors.hash`` (SHA-256 over
the token ids). A set written by an older version as
``<model>.safetensors`` is read too. Only the small ``.hash`` files are read
at start-up; a prefix's KV is read the first time a prompt needs it and is
then served from the in-memory prefix tree. Files whose length or hash do
not match their contents are removed, never trusted. Use refreshes a set's
modification time: the oldest sets go first when the directory outgrows
``--prompt-cache-disk-max-gb``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import BinaryIO

from mlx_lm.models.cache import save_prompt_cache

from .files import read_regular, tokens_hash, write_atomic
from .segments import Cache
from .validate import Reference, parse_cache

log = logging.getLogger("kmlx.worker.prefix")

_HEX = re.compile(r"^[0-9a-f]{64}$")


class PrefixStore:
    def __init__(self, directory: Path, model_id: str, *, max_bytes: int, max_file_bytes: int = 8 << 30):
        self.directory = directory
        self.stem = re.sub(r"[^A-Za-z0-9_.-]", "_", model_id).lstrip(".") or "model"
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self.index: dict[str, Path] = {}  # SHA-256 of the tokens -> the .safetensors path
        self.saves = 0
        self.loads = 0
        self.removed = 0
        self._known: set[tuple[int, int]] = set()  # quick keys of prefixes known to be on disk
        self._names = re.compile(rf"^{re.escape(self.stem)}(\.[0-9a-f]{{16}})?\.safetensors$")

    def scan(self) -> None:
        """Learn which prefixes are on disk (reads only their ``.hash`` files)."""
        if not self.directory.is_dir():
            return
        for entry in os.scandir(self.directory):
            if not self._names.match(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            path = Path(entry.path)
            try:
                raw = read_regular(Path(f"{path}.hash"), 1 << 10)
            except Exception as exc:
                log.warning("ignoring prefix cache %s: %s", path.name, exc)
                continue
            digest = raw.decode(errors="replace").strip() if raw is not None else ""
            if _HEX.match(digest):
                self.index[digest] = path
        if self.index:
            log.info("%d system-prefix cache(s) on disk in %s", len(self.index), self.directory)

    def has(self, tokens: list[int]) -> bool:
        # Asked after every finished request with a system prompt: a Python
        # hash of the tokens answers the common "already saved" case in
        # ~20 us, not the ~1 ms of the SHA-256 over their decimal text.
        quick = (len(tokens), hash(tuple(tokens)))
        if quick in self._known:
            return True
        if tokens_hash(tokens) in self.index:
            self._known.add(quick)
            return True
        return False

    def find(self, tokens: list[int], reference: Reference | None) -> Cache | None:
        """The KV of exactly ``tokens`` if it is on disk and whole."""
        digest = tokens_hash(tokens)
        path = self.index.get(digest)
        if path is None:
            return None
        try:
            data = read_regular(path, self.max_file_bytes)
            length = read_regular(Path(f"{path}.len"), 1 << 10)
            if data is None or length is None:
                raise ValueError("a file of the set is missing")
            cache, meta = parse_cache(data, reference)
            ok = json.loads(meta["tokens"]) == tokens and int(length.decode().strip()) == len(tokens)
        except Exception as exc:  # damaged files are removed, never trusted
            log.warning("removing prefix cache %s: %s", path.name, exc)
            self._remove(digest)
            return None
        if not ok:
            log.warning("removing prefix cache %s: its tokens, .len or .hash do not match", path.name)
            self._remove(digest)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: removed last
        self.loads += 1
        log.info("loaded system-prefix cache (%d tokens) from %s", len(tokens), path.name)
        return cache

    def save(self, tokens: list[int], cache: Cache) -> None:
        """Write the set for ``tokens`` (a full disk is logged, not raised:
        it must not fail the request that offered it)."""
        digest = tokens_hash(tokens)
        path = self.directory / f"{self.stem}.{digest[:16]}.safetensors"

        def data(f: BinaryIO) -> None:
            save_prompt_cache(f, cache, {"tokens": json.dumps(tokens)})  # type: ignore[arg-type]

        length = str(len(tokens)).encode()
        # All three are written before any is renamed; a crash between the
        # renames leaves a set that fails the checks on load.
        try:
            write_atomic(self.directory, {
                path.name: data,
                f"{path.name}.len": lambda f: f.write(length),
                f"{path.name}.hash": lambda f: f.write(digest.encode()),
            })
        except Exception as exc:
            log.warning("could not save the system-prefix cache: %s", exc)
            return
        self.index[digest] = path
        self._known.add((len(tokens), hash(tuple(tokens))))
        self.saves += 1
        log.info("saved system-prefix cache (%d tokens) to %s", len(tokens), path.name)
        self._enforce_budget(keep=digest)

    def _enforce_budget(self, keep: str) -> None:
        sizes: list[tuple[float, int, str]] = []
        for digest, path in self.index.items():
            try:
                st = path.stat()
            except OSError:
                continue
            extra = sum(Path(f"{path}{s}").stat().st_size for s in (".len", ".hash") if Path(f"{path}{s}").exists())
            sizes.append((st.st_mtime, st.st_size + extra, digest))
        total = sum(s for _, s, _ in sizes)
        for _, size, digest in sorted(sizes):
            if total <= self.max_bytes:
                break
            if digest != keep:
                self._remove(digest)
                total -= size

    def _remove(self, digest: str) -> None:
        path = self.index.pop(digest, None)
        if path is None:
            return
        self._known.clear()  # rebuilt from the index as prefixes are asked for again
        for p in (path, Path(f"{path}.len"), Path(f"{path}.hash")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.removed += 1

    @property
    def files(self) -> int:
        return len(self.index)
