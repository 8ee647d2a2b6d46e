"""KV caches on disk: atomic, private, checksummed, and refused when foreign.

A cache file is mlx-lm's prompt-cache safetensors format; beside it a JSON
sidecar records what the file holds (tokens, message boundaries, hashes,
title, time, model, tokenizer hash) and the SHA-256 of the safetensors
bytes. Loading reads the file once into memory, checks the checksum and the
model, and hands the bytes to ``validate.py``, which builds and checks the
cache; nothing is read from the file later (MLX loads lazily, so a file
that changed after a load used to fail the whole batch when first used).

Every descriptor is closed on every path. A write goes to a locked
temporary file in the same directory (``.<name>.<random>.tmp``) and is
renamed into place only when complete; on any error, a full disk included,
the temporary file is removed and its space returned. Temporary files left
by a killed process are removed at start-up (``remove_stale_temporaries``);
a file another live process is still writing is locked and left alone.

Names on disk come from ``safe_name()``, never from a client's string
directly, so no id can point outside the directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mlx_lm.models.cache import save_prompt_cache

from .validate import CacheFileError, Reference, parse_cache
from .views import Cache

log = logging.getLogger("kmlx.worker.kv")

QUARANTINE = "quarantine"  # damaged files go here (a subdirectory), newest kept
QUARANTINE_KEEP = 16
MAX_META_BYTES = 64 << 20  # a sidecar holds token ids: ~1 MB for 131k tokens
# Our temporary files: dotfiles ending in .tmp (and, from older versions,
# dotfiles ending in .safetensors). Final names never start with a dot.
_TEMPORARY = re.compile(r"^\..+\.(tmp|safetensors)$")
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

__all__ = ["CacheFileError", "SavedCache", "save_cache", "load_cache", "read_meta", "delete_cache", "quarantine"]


def safe_name(identifier: str) -> str:
    """A file-name stem for any id: readable part + hash (no collisions,
    no separators, no dots at the start, bounded length)."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", identifier)[:64] or "_"
    digest = hashlib.sha256(identifier.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}-{digest}"


def tokens_hash(tokens: list[int]) -> str:
    """SHA-256 over the token ids written as comma-separated decimals."""
    return hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest()


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in _NO_SPACE


@dataclass
class SavedCache:
    cache: Cache
    meta: dict[str, Any]


# ---------------------------------------------------------------------- #
# Writing
@contextlib.contextmanager
def temporary_file(directory: Path, final_name: str) -> Iterator[tuple[Path, BinaryIO]]:
    """A new private file beside ``final_name``, locked while it is open.

    The caller writes it and renames it into place inside the ``with``; on
    leaving, the descriptor is closed and the file removed if it is still
    there (an error, a full disk, a rename that never happened)."""
    path = directory / f".{final_name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        f = os.fdopen(fd, "w+b")
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    with f:
        try:
            # Held until closed: start-up clean-up skips files that are locked.
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield path, f
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # still there: it was not renamed into place


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, 1 << 20, offset):
        h.update(block)
        offset += len(block)
    return h.hexdigest()


def _sync_directory(directory: Path) -> None:
    """Make the renames durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(directory: Path, files: dict[str, Callable[[BinaryIO], object]]) -> None:
    """Write several files, then rename them all into place: none is
    renamed unless every one was written completely."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.ExitStack() as stack:
        done: list[tuple[Path, str]] = []
        for name, write in files.items():
            tmp, f = stack.enter_context(temporary_file(directory, name))
            write(f)
            _sync(f)
            done.append((tmp, name))
        for tmp, name in done:
            os.replace(tmp, directory / name)
    _sync_directory(directory)


def save_cache(directory: Path, stem: str, cache: Cache, meta: dict[str, Any]) -> tuple[Path, int]:
    """Write ``<stem>.safetensors`` + ``<stem>.json`` atomically (0600).

    Both are written completely to temporary files first; then the
    safetensors file is renamed, then the sidecar. A crash between the two
    renames leaves a checksum mismatch (refused and quarantined on load),
    never a sidecar vouching for the wrong bytes."""
    written: dict[str, Any] = {}

    def write_data(f: BinaryIO) -> None:
        # A Python file object, not a path: a full disk surfaces as OSError(ENOSPC).
        save_prompt_cache(f, cache, {"kmlx": "1"})  # type: ignore[arg-type]
        _sync(f)
        written.update(size_bytes=os.fstat(f.fileno()).st_size, sha256=_sha256_fd(f.fileno()))

    def write_meta(f: BinaryIO) -> None:
        f.write(json.dumps({**meta, **written, "ts": meta.get("ts", time.time())}).encode())

    write_atomic(directory, {f"{stem}.safetensors": write_data, f"{stem}.json": write_meta})
    return directory / f"{stem}.safetensors", written["size_bytes"]


# ---------------------------------------------------------------------- #
# Reading
def read_regular(path: Path, limit: int) -> bytes | None:
    """The whole of a regular file (no symlink, FIFO or device: those could
    block or point anywhere), or None if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheFileError(f"{path.name} cannot be opened: {exc.strerror}", code="cache_file_corrupt") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CacheFileError(f"{path.name} is not a regular file", code="cache_file_corrupt")
        if st.st_size > limit:
            raise CacheFileError(f"{path.name} is {st.st_size} bytes; the limit is {limit}", code="cache_file_corrupt")
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 24, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise CacheFileError(f"{path.name} grew past {limit} bytes while being read", code="cache_file_corrupt")
        return b"".join(chunks)
    except OSError as exc:
        raise CacheFileError(f"{path.name} cannot be read: {exc.strerror}", code="cache_file_corrupt") from None
    finally:
        os.close(fd)


def read_meta(directory: Path, stem: str) -> dict[str, Any] | None:
    path = directory / f"{stem}.json"
    raw = read_regular(path, MAX_META_BYTES)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CacheFileError(f"cache metadata {path.name} is unreadable: {exc}", code="cache_file_corrupt") from None
    if not isinstance(meta, dict):
        raise CacheFileError(f"cache metadata {path.name} is not an object", code="cache_file_corrupt")
    return meta


def load_cache(
    directory: Path, stem: str, *, model_id: str, tokenizer_hash: str, reference: Reference | None, max_bytes: int
) -> SavedCache | None:
    """Load, check and evaluate a saved cache, or None if nothing is saved
    under that name. Raises CacheFileError (``code`` says which kind)."""
    meta = read_meta(directory, stem)
    if meta is None:
        return None
    if meta.get("model") != model_id or meta.get("tokenizer_hash") != tokenizer_hash:
        raise CacheFileError(
            f"this cache was saved for model {meta.get('model')!r}, not {model_id!r}", status=409, code="cache_model_mismatch"
        )
    path = directory / f"{stem}.safetensors"
    data = read_regular(path, max_bytes)
    if data is None:
        raise CacheFileError(f"cache file for this id is missing ({path.name})", code="cache_file_corrupt")
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CacheFileError("cache file is damaged (checksum mismatch)", code="cache_file_corrupt")
    cache, _ = parse_cache(data, reference)
    return SavedCache(cache, meta)


def delete_cache(directory: Path, stem: str) -> bool:
    found = False
    for suffix in (".json", ".safetensors"):
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{stem}{suffix}").unlink()
            found = True
    return found


def quarantine(directory: Path, stem: str) -> list[Path]:
    """Move a damaged cache's files out of the way (kept for a post-mortem,
    the newest ``QUARANTINE_KEEP`` only), so the next request starts fresh."""
    q = directory / QUARANTINE
    moved: list[Path] = []
    try:
        q.mkdir(exist_ok=True, mode=0o700)
        tag = time.strftime("%Y%m%dT%H%M%S")
        for suffix in (".safetensors", ".json"):
            src = directory / f"{stem}{suffix}"
            if os.path.lexists(src):
                dst = q / f"{stem}.{tag}{suffix}"
                os.replace(src, dst)
                moved.append(dst)
        for old in sorted(q.iterdir(), key=lambda p: p.lstat().st_mtime)[: -QUARANTINE_KEEP * 2]:
            old.unlink()
    except OSError as exc:  # can't move it: delete it rather than trip on it again
        log.warning("could not quarantine %s (%s); deleting it", stem, exc)
        delete_cache(directory, stem)
    return moved


# ---------------------------------------------------------------------- #
# Housekeeping
def remove_stale_temporaries(directory: Path) -> int:
    """Remove temporary files a killed process left behind. A file some
    live process still has locked (a save in progress) is left alone."""
    if not directory.is_dir():
        return 0
    removed = 0
    for entry in os.scandir(directory):
        if not _TEMPORARY.match(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # being written right now
        else:
            os.unlink(entry.path)
            removed += 1
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d temporary file(s) left in %s by an earlier run", removed, directory)
    return removed


def directory_bytes(directory: Path) -> int:
    """Bytes of the saved caches, the quarantined ones included."""
    total = 0
    for d in (directory, directory / QUARANTINE):
        if d.is_dir():
            total += sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(d) if e.is_file(follow_symlinks=False))
    return total


def disk_fraction_used(directory: Path) -> float:
    usage = shutil.disk_usage(directory if directory.exists() else directory.parent)
    return usage.used / usage.total if usage.total else 1.0
