"""Make MLX's CPU backend multiply matrices with a fast BLAS.

The Linux `mlx-cpu` wheel links the reference (netlib) BLAS, roughly 35x slower
than OpenBLAS for the float32 matmuls of a prefill (measured here: a
256x576x1536 sgemm takes 125 ms vs 3.5 ms). MLX calls `cblas_sgemm` through the
dynamic linker, so a library loaded into the global symbol scope before libmlx
wins: either dlopen(RTLD_GLOBAL) before `mlx.core` is first imported, or, once
it has been, a re-exec of the process with LD_PRELOAD.

Nothing here imports mlx, and nothing runs at import time.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from .cache import atomic_file, kmlx_cache_dir

# Set on the re-exec'd process: which library we asked the loader to preload.
_GUARD = "KMLX_BLAS_PRELOADED"
_INSTALL_HINT = (
    "install OpenBLAS (Debian/Ubuntu: apt-get install libopenblas0-pthread) "
    "or set KMLX_BLAS=/path/to/libopenblas.so.0"
)

# Loads the library in a throw-away interpreter and runs one small sgemm: a
# library built for a newer CPU (cmeel-openblas ships a SKYLAKEX-only build)
# dies with SIGILL there instead of in the worker.
_PROBE = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
n = 64
A = (ctypes.c_float * (n * n))(*([1.0] * (n * n)))
C = (ctypes.c_float * (n * n))()
f = lib.cblas_sgemm
f.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
              ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
f(101, 111, 111, n, n, n, 1.0, A, n, A, n, 0.0, C, n)
assert abs(C[0] - n) < 1e-3, C[0]
name = "MKL" if "mkl" in sys.argv[1] else "OpenBLAS"
try:
    lib.openblas_get_config.restype = ctypes.c_char_p
    name = "OpenBLAS " + lib.openblas_get_config().decode().split()[1]
except Exception:
    pass
print(name)
"""


def ensure_fast_blas(*, reexec: bool = True) -> str:
    """Arrange for a fast BLAS and say which BLAS this process uses (one line).

    Call it first thing in a worker's main(). On Linux it may replace the
    process (os.execv with the same interpreter and arguments) when mlx is
    already imported; pass reexec=False from in-process callers such as tests.
    Calling it again is cheap and never loops.
    """
    if sys.platform == "darwin":
        return "Metal (Accelerate for CPU ops)"
    if not sys.platform.startswith("linux"):
        return "bundled BLAS"
    loaded = _loaded_fast_blas()
    if loaded:
        return f"{_describe(loaded)} (preloaded from {loaded})"
    if os.environ.get("KMLX_BLAS", "").lower() in ("none", "bundled", "off", "0"):
        return "bundled reference BLAS (KMLX_BLAS=none)"
    found = find_fast_blas()
    if found is None:
        explicit = os.environ.get("KMLX_BLAS", "")
        if os.sep in explicit:
            return f"bundled reference BLAS (slow: KMLX_BLAS={explicit} does not load or run here)"
        return f"bundled reference BLAS (slow: {_INSTALL_HINT})"
    lib, name = found
    if "mlx.core" not in sys.modules:
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass
        else:
            _export_preload(lib)  # child processes that import mlx get it too
            return f"{name} (preloaded from {lib})"
    if os.environ.get(_GUARD) == lib or not reexec:
        why = "re-exec did not load it" if reexec else "mlx already imported"
        return f"bundled reference BLAS (slow: {lib} not preloaded, {why})"
    _export_preload(lib)
    os.environ[_GUARD] = lib
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, list(getattr(sys, "orig_argv", [sys.executable, *sys.argv])))
    raise AssertionError("unreachable")  # pragma: no cover


def find_fast_blas() -> tuple[str, str] | None:
    """The first candidate library that works on this CPU, with its name."""
    for path in _candidates():
        name = _probe_cached(path)
        if name:
            return path, name
    return None


def _candidates() -> list[str]:
    explicit = os.environ.get("KMLX_BLAS", "")
    if explicit and os.sep in explicit:
        return [explicit]  # the user chose; don't silently use another
    arch = platform.machine()
    roots = [f"/usr/lib/{arch}-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"]
    names = [
        "openblas-pthread/libopenblas.so.0",
        "libopenblas.so.0",
        "openblas-openmp/libopenblas.so.0",
        "libopenblasp.so.0",
    ]
    paths = [f"{root}/{name}" for root in roots for name in names]
    # PyPI builds inside this environment (the mlx-cpu wheel's own libgfortran is
    # not visible under its usual name, so cmeel's may fail its probe; MKL works).
    prefix = Path(sys.prefix)
    paths += [str(p) for p in prefix.glob("lib/python3*/site-packages/cmeel.prefix/lib/libopenblas.so.0")]
    paths.append(str(prefix / "lib" / "libmkl_rt.so.2"))
    return [p for p in dict.fromkeys(paths) if os.path.exists(p)]


def _probe_cached(path: str) -> str | None:
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return None
    key = f"{real}|{st.st_size}|{st.st_mtime_ns}|{_cpu_model()}"
    cache = kmlx_cache_dir() / "blas-probe.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key] or None
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _PROBE, path],
            capture_output=True, text=True, timeout=30,
        )
        name = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        name = ""
    known[key] = name
    try:
        with atomic_file(cache) as tmp:
            tmp.write_text(json.dumps(known, indent=1))
    except OSError:
        pass  # a read-only cache only costs a probe per start
    return name or None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):  # the flags decide whether a build runs here
                    return hashlib.sha1(line.encode()).hexdigest()[:16]
    except OSError:
        pass
    return platform.processor()


def _loaded_fast_blas() -> str | None:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        base = os.path.basename(path)
        if base.startswith(("libopenblas", "libmkl_rt")):
            return path
    return None


def _describe(path: str) -> str:
    try:
        lib = ctypes.CDLL(path)  # already mapped: just a handle
        lib.openblas_get_config.restype = ctypes.c_char_p
        return "OpenBLAS " + lib.openblas_get_config().decode().split()[1]
    except (OSError, AttributeError, IndexError):
        return "MKL" if "mkl" in path else "OpenBLAS"


def _export_preload(lib: str) -> None:
    current = os.environ.get("LD_PRELOAD", "")
    if lib not in current.split():
        os.environ["LD_PRELOAD"] = f"{lib} {current}".strip()


DEBIAN_PACKAGE = "libopenblas0-pthread"


def install_fast_blas() -> str:
    """Set-up step: install OpenBLAS with the system package manager where we can.

    Only Debian/Ubuntu as root (CI, containers); elsewhere it returns the command
    to run. Never fails the set-up: a worker without OpenBLAS still works, slowly.
    """
    if not sys.platform.startswith("linux"):
        return "nothing to do: not Linux"
    found = find_fast_blas()
    if found:
        return f"{found[1]} already installed: {found[0]}"
    hint = f"sudo apt-get install {DEBIAN_PACKAGE}"
    if not os.path.exists("/usr/bin/apt-get"):
        return "no apt-get here: install OpenBLAS with your package manager (or set KMLX_BLAS=/path/to/libopenblas.so.0)"
    if os.geteuid() != 0:
        return f"not root: run `{hint}` for ~7x faster prefill on CPU"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", DEBIAN_PACKAGE]
    for attempt in range(2):
        try:
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"could not run apt-get ({exc}); run `{hint}`"
        if done.returncode == 0:
            break
        if attempt == 0:  # a fresh container has no package lists yet
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
    else:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"apt-get install {DEBIAN_PACKAGE} failed ({last}); the worker will use the slow bundled BLAS"
    found = find_fast_blas()
    return f"installed {found[1]}: {found[0]}" if found else f"installed {DEBIAN_PACKAGE}, but it does not run here"
