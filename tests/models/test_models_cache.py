"""Cache location, one-time conversion, the module CLI and the BLAS preload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.models.gguf_synth import write_llama
from worker.models import kmlx_cache_dir, load_model

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("KMLX_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert kmlx_cache_dir() == Path.home() / ".cache" / "kmlx"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kmlx_cache_dir() == tmp_path / "xdg" / "kmlx"
    monkeypatch.setenv("KMLX_CACHE_DIR", str(tmp_path / "explicit"))
    assert kmlx_cache_dir() == tmp_path / "explicit"


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    from worker.models.cache import atomic_dir

    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed halfway")
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(dest) as tmp:
        (tmp / "whole.bin").write_bytes(b"x")
    assert [p.name for p in dest.iterdir()] == ["whole.bin"]


def test_gguf_is_converted_once_and_named_after_the_file(tmp_path, monkeypatch, tokenizer_meta):
    monkeypatch.setenv("KMLX_CACHE_DIR", str(tmp_path / "cache"))
    gguf = write_llama(tmp_path / "My-Model.Q4_0.gguf", tokenizer_meta, tied=True, qkv_bias=False)
    first = load_model(str(gguf))
    assert first.model_id == "My-Model.Q4_0"
    assert first.path.is_relative_to(tmp_path / "cache" / "models") and first.path.name == "My-Model.Q4_0"
    stamp = (first.path / "model.safetensors").stat().st_mtime_ns
    second = load_model(str(gguf))
    assert second.path == first.path
    assert (second.path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rewritten
    source = json.loads((first.path / "kmlx-source.json").read_text())
    assert source["source"] == str(gguf.resolve())
    # A folder holding exactly one .gguf resolves to the same conversion.
    assert load_model(str(tmp_path), weights="native").path == first.path
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_default_model_cache_is_versioned(default_model_path):
    from worker.models.default import GGUF_SHA256
    from worker.models.gguf_convert import CONVERTER_VERSION, is_current

    source = json.loads((default_model_path / "kmlx-source.json").read_text())
    assert source["sha256"] == GGUF_SHA256
    assert source["converter_version"] == CONVERTER_VERSION
    assert is_current(default_model_path, sha256=GGUF_SHA256)
    assert not is_current(default_model_path, sha256="0" * 64)


def test_default_gguf_checksum(default_gguf):
    from worker.models.cache import sha256_file
    from worker.models.default import GGUF_SHA256

    assert sha256_file(default_gguf) == GGUF_SHA256


@pytest.mark.e2e  # starts a child process
def test_cli_fetch_default_and_build_tiny(default_model_path, tiny_model_path):
    for command, expected in (("fetch-default", default_model_path), ("build-tiny", tiny_model_path)):
        run = subprocess.run([sys.executable, "-m", "worker.models", command], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == str(expected)


@pytest.mark.e2e  # starts a child process
def test_cli_error_is_one_line(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf at all")
    run = subprocess.run([sys.executable, "-m", "worker.models", "convert", str(tmp_path / "x.gguf")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "KMLX_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "not a GGUF file" in errors[0], run.stderr


@pytest.mark.e2e  # starts a child process
def test_importing_the_package_does_not_import_mlx():
    run = run_python("""
        import sys, worker.models
        print("mlx" in sys.modules or "mlx.core" in sys.modules)
    """)
    assert run.stdout.strip() == "False", run.stderr


@pytest.mark.e2e  # starts a child process
def test_fast_blas_reexec_once():
    """With MLX already imported, ensure_fast_blas re-execs once with LD_PRELOAD; no loop."""
    from worker.models.blas import find_fast_blas

    if sys.platform != "linux" or find_fast_blas() is None:
        pytest.skip("no fast BLAS installed here (apt-get install libopenblas0-pthread)")
    run = run_python("""
        import os, mlx.core
        from worker.models import ensure_fast_blas
        print("start", os.getpid(), flush=True)
        print("blas:", ensure_fast_blas())
        print("again:", ensure_fast_blas())
    """, env={"LD_PRELOAD": "", "KMLX_BLAS_PRELOADED": ""})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    starts = [ln for ln in lines if ln.startswith("start")]
    assert len(starts) == 2 and starts[0] == starts[1]  # execv: same pid, ran twice
    assert "preloaded from" in lines[-2] and "preloaded from" in lines[-1]


@pytest.mark.e2e  # starts a child process
def test_fast_blas_can_be_disabled():
    run = run_python("""
        from worker.models import ensure_fast_blas
        print(ensure_fast_blas())
    """, env={"KMLX_BLAS": "none", "LD_PRELOAD": ""})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "bundled reference BLAS (KMLX_BLAS=none)"


def test_dequantized_weights_are_cached_and_identical(tmp_path, monkeypatch, tokenizer_meta):
    """The first CPU (float32) load of a quantized model stores its float32 weights;
    the next load reads them instead of recomputing, and computes the same logits."""
    import mlx.core as mx
    import numpy as np

    monkeypatch.setenv("KMLX_CACHE_DIR", str(tmp_path / "cache"))
    gguf = write_llama(tmp_path / "q.gguf", tokenizer_meta, tied=True, qkv_bias=False)
    ids = mx.array([[1, 504, 3575, 282, 4649]])
    first = load_model(str(gguf), weights="float32")
    derived = list((tmp_path / "cache" / "derived").glob("*/float32/model.safetensors"))
    assert len(derived) == 1
    stamp = derived[0].stat().st_mtime_ns
    second = load_model(str(gguf), weights="float32")
    assert derived[0].stat().st_mtime_ns == stamp  # read, not rewritten
    assert second.weights == "float32"
    assert np.array_equal(np.array(first.model(ids)), np.array(second.model(ids)))
    monkeypatch.setenv("KMLX_DERIVED_MAX_GB", "0")
    assert load_model(str(gguf), weights="bfloat16").weights == "bfloat16"
    assert not list((tmp_path / "cache" / "derived").glob("*/bfloat16"))  # over the (zero) limit
