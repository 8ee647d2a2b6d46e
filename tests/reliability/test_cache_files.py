"""Conversation-cache files under hostile conditions, in-process: descriptors,
a file that changes after loading, disk full, damaged and foreign layouts,
files that would block, and temporaries left by a killed process."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import signal
import threading
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache, RotatingKVCache

from worker.kv import files
from worker.kv.validate import CacheFileError, Reference, describe

MODEL, TOKHASH = "test-model", "t0k"


def kv(n: int, heads: int = 2, dim: int = 4, layers: int = 2, dtype=mx.float32) -> list[KVCache]:
    out = []
    for _ in range(layers):
        c = KVCache()
        x = mx.arange(n * heads * dim, dtype=dtype).reshape(1, heads, n, dim)
        c.update_and_fetch(x, x + 1)
        out.append(c)
    return out


REFERENCE = Reference(describe(kv(1)), vocab_size=1000)


def fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else len(os.listdir("/dev/fd"))


def save(d: Path, stem: str = "conv", n: int = 5, cache=None) -> None:
    meta = {"id": stem, "tokens": list(range(n)), "model": MODEL, "tokenizer_hash": TOKHASH}
    files.save_cache(d, stem, cache or kv(n), meta)


def load(d: Path, stem: str = "conv", reference: Reference | None = REFERENCE) -> files.SavedCache | None:
    return files.load_cache(d, stem, model_id=MODEL, tokenizer_hash=TOKHASH, reference=reference, max_bytes=1 << 30)


def test_saves_and_loads_close_every_descriptor(tmp_path):
    save(tmp_path)
    load(tmp_path)  # warm up whatever MLX opens once
    before = fds()
    for i in range(100):
        save(tmp_path, n=3 + i % 4)
        assert load(tmp_path) is not None
        files.delete_cache(tmp_path, "gone")
    assert fds() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.json", "conv.safetensors"]


def test_a_loaded_cache_does_not_read_its_file_again(tmp_path):
    """The file may be truncated, replaced or deleted after a load: the cache
    in memory is whole (MLX loads lazily; this used to fail in the batch)."""
    save(tmp_path, n=7)
    saved = load(tmp_path)
    path = tmp_path / "conv.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    keys, values, offset = saved.cache[1].state
    assert offset == 7
    assert mx.sum(keys[..., :7, :]).item() == sum(range(7 * 2 * 4))
    assert mx.sum(values[..., :7, :]).item() == sum(range(7 * 2 * 4)) + 7 * 2 * 4


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """The kernel refuses writes past ``nbytes`` (EFBIG): a full disk without a mount."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_failed_write_leaves_the_old_files_and_no_partial_one(tmp_path):
    save(tmp_path, n=3)
    before_files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    before = fds()
    with file_size_limit(2000), pytest.raises(OSError) as err:
        save(tmp_path, n=200)
    assert files.is_disk_full(err.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before_files  # no temporary left, old save intact
    assert fds() == before
    assert load(tmp_path).meta["tokens"] == [0, 1, 2]


def test_damaged_files_are_refused_as_damaged(tmp_path):
    save(tmp_path, n=4)
    path = tmp_path / "conv.safetensors"
    good = path.read_bytes()
    path.write_bytes(good[:-10])
    with pytest.raises(CacheFileError) as err:
        load(tmp_path)
    assert err.value.damaged and err.value.status == 422 and "checksum" in str(err.value)

    path.unlink()
    with pytest.raises(CacheFileError, match="missing") as err:
        load(tmp_path)
    assert err.value.damaged

    (tmp_path / "conv.json").write_text("[" * 100_000)
    with pytest.raises(CacheFileError) as err:
        load(tmp_path)
    assert err.value.damaged


def test_another_models_file_is_refused_not_damaged(tmp_path):
    save(tmp_path)
    with pytest.raises(CacheFileError) as err:
        files.load_cache(tmp_path, "conv", model_id="other", tokenizer_hash=TOKHASH, reference=REFERENCE, max_bytes=1 << 30)
    assert err.value.status == 409 and not err.value.damaged


def resigned(d: Path, stem: str = "conv") -> None:
    """Make the sidecar vouch for whatever the safetensors file now holds
    (a checksum is integrity, not authenticity: the layout is checked too)."""
    import hashlib

    meta_path = d / f"{stem}.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256((d / f"{stem}.safetensors").read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "cache, complaint",
    [
        (kv(5, heads=3), "shape"),
        (kv(5, dim=8), "shape"),
        (kv(5, dtype=mx.float16), "float16"),
        (kv(5, layers=3), "3 layers"),
        ([RotatingKVCache(max_size=8) for _ in range(2)], "RotatingKVCache"),
    ],
)
def test_a_layout_the_model_cannot_use_is_refused(tmp_path, cache, complaint):
    if isinstance(cache[0], RotatingKVCache):
        for c in cache:
            x = mx.ones((1, 2, 5, 4))
            c.update_and_fetch(x, x)
    save(tmp_path, cache=cache)
    with pytest.raises(CacheFileError, match=complaint) as err:
        load(tmp_path)
    assert err.value.damaged


def test_an_offset_past_the_stored_tokens_is_refused(tmp_path):
    cache = kv(5)
    for c in cache:
        c.keys, c.values = c.keys[..., :5, :], c.values[..., :5, :]
        c.offset = 9  # claims more tokens than it holds
    save(tmp_path, cache=cache)
    with pytest.raises(CacheFileError, match="claims 9 tokens but holds 5"):
        load(tmp_path)


def test_a_fifo_or_symlink_is_refused_without_blocking(tmp_path):
    save(tmp_path)
    path = tmp_path / "conv.safetensors"
    path.unlink()
    os.mkfifo(path)
    result: list[BaseException | None] = []

    def attempt() -> None:
        try:
            load(tmp_path)
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    assert result, "reading a FIFO blocked"
    assert isinstance(result[0], CacheFileError) and "not a regular file" in str(result[0])
    path.unlink()
    secret = tmp_path / "elsewhere"
    secret.write_bytes(b"x")
    path.symlink_to(secret)
    with pytest.raises(CacheFileError):
        load(tmp_path)


def test_quarantine_moves_both_files_aside(tmp_path):
    save(tmp_path)
    moved = files.quarantine(tmp_path, "conv")
    assert sorted(p.suffix for p in moved) == [".json", ".safetensors"]
    assert all(p.parent == tmp_path / files.QUARANTINE for p in moved)
    assert load(tmp_path) is None  # nothing saved under that name any more
    assert files.directory_bytes(tmp_path) == sum(p.stat().st_size for p in moved)


def test_stale_temporaries_are_removed_but_a_live_writers_is_not(tmp_path):
    stale = [tmp_path / ".conv.safetensors.0a1b2c.tmp", tmp_path / ".conv.abc123.safetensors", tmp_path / ".conv.json.77.tmp"]
    for p in stale:
        p.write_bytes(b"x" * 1000)
    keep = [tmp_path / "conv.safetensors", tmp_path / ".bashrc", tmp_path / "notes.tmp"]
    for p in keep:
        p.write_bytes(b"y")
    with files.temporary_file(tmp_path, "live.safetensors") as (live, f):
        f.write(b"being written")
        assert files.remove_stale_temporaries(tmp_path) == len(stale)
        assert live.exists()
    assert not live.exists()  # never renamed: removed on leaving
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)


def test_a_temporary_file_is_locked_while_open(tmp_path):
    with files.temporary_file(tmp_path, "x.json") as (path, _f):
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
