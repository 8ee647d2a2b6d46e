"""Where kmlx keeps fetched and converted models, and how it writes there safely."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def kmlx_cache_dir() -> Path:
    """$KMLX_CACHE_DIR, else $XDG_CACHE_HOME/kmlx, else ~/.cache/kmlx (not created)."""
    explicit = os.environ.get("KMLX_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kmlx"


def models_dir() -> Path:
    return kmlx_cache_dir() / "models"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a scratch folder beside `dest`; on success it becomes `dest` by rename.

    Readers therefore see either no folder or a complete one, even if the writer
    is killed halfway, and two processes converting at once cannot mix files: the
    loser of the rename race just discards its copy.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        yield tmp
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not a lost race: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """Like `atomic_dir` for one file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(name: str) -> Iterator[None]:
    """Serialize a slow one-time step (fetch, convert) across processes.

    Without it two workers started together would both download and convert;
    the atomic rename would keep the result correct, but at twice the cost.
    """
    path = kmlx_cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: best effort
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def discard_dir(folder: Path) -> None:
    """Remove a stale folder: renamed away first, so no reader sees half of it."""
    if not folder.exists():
        return
    trash = folder.with_name(f".{folder.name}.stale-{os.getpid()}")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)
