"""Load time and memory of a GGUF model per tensor type: first start (conversion) vs cached.

    python -m bench gguf-load                       # SmolLM2's own file, then every type
    python -m bench gguf-load --types SmolLM2 Q4_K Q6_K

For each type a llama of SmolLM2's size (140M weights: 8 layers of width 1024,
SmolLM2's 49k vocabulary; random weights, since SmolLM2's own rows of 576 are
no multiple of 256 and could not be K-quants) is written with every matrix in
that type (bench/gguf_encode.py). Each measurement runs in a fresh process
with its own empty cache, so nothing is shared between types:

    first     load_model(file): convert to the MLX folder, then the weights for
              this backend (CPU: float32 from the GGUF, stored for next time)
    cached    the same call again, in a new process: everything read from cache
    native    weights="native" from the cached conversion (what Metal/CUDA run)

Printed: seconds of `load_model` (mlx-lm and transformers already imported,
as in a running worker) and MLX's memory after the load: the model's weights,
what a loaded model holds (its KV caches come on top, with requests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

TYPES = ["Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "IQ4_NL", "IQ4_XS", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]
SHAPE = {"hidden": 1024, "ffn": 2816, "layers": 8, "heads": 16, "kv_heads": 4}
_CHILD = """
import json, sys, time
from worker.models import ensure_fast_blas
ensure_fast_blas(reexec=False)
import mlx.core as mx
import mlx_lm.utils  # imported before the clock starts, as a worker has it already (seconds of Python)
from worker.models import load_model
start = time.perf_counter()
loaded = load_model(sys.argv[1], weights=sys.argv[2])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "weights": loaded.weights,
                  "mlx_gb": mx.get_active_memory() / 2**30}))
"""


def run(model_path: Path, types: list[str] | None = None) -> None:
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="kmlx-gguf-load-") as tmp:
        print(f"{'file':8s} {'MB':>5s} {'first s':>8s} {'cached s':>9s} {'native s':>9s} "
              f"{'memory GB f32/native':>21s}  in memory")
        for kind in types or ["SmolLM2", *TYPES]:
            path = Path(tmp) / f"{kind}.gguf"
            if kind == "SmolLM2":  # the real default model's file, as shipped (Q4_1, Q8_0 embedding)
                from worker.models.default import ensure_default_gguf

                shutil.copy(ensure_default_gguf(), path)
            else:
                write_gguf(path, kind)
            env = {**os.environ, "KMLX_CACHE_DIR": str(Path(tmp) / f"cache-{kind}")}
            first = _child(root, env, path, "auto")
            cached = _child(root, env, path, "auto")
            native = _child(root, env, path, "native")
            print(f"{kind:8s} {path.stat().st_size / 1e6:5.0f} {first['seconds']:8.1f} {cached['seconds']:9.2f} "
                  f"{native['seconds']:9.2f} {cached['mlx_gb']:12.2f} / {native['mlx_gb']:.2f}      "
                  f"{cached['weights']} / {native['weights']}")
            path.unlink()


def _child(root: Path, env: dict[str, str], path: Path, weights: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), weights], cwd=root, env=env, check=False,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_gguf(path: Path, kind: str) -> None:
    """A 140M-weight llama of random weights (SmolLM2's size, with rows a multiple of
    256 so every matrix can be a K-quant) and the default model's tokenizer, every
    matrix and the embedding in `kind`."""
    import gguf

    from bench.gguf_encode import encode
    from worker.models.default import ensure_default_gguf
    from worker.models.gguf_file import read_gguf
    from worker.models.gguf_quants import QUANT_TYPES

    meta = read_gguf(ensure_default_gguf()).meta  # kmlx's own reader: gguf-py's takes minutes here
    h, ffn, layers, heads, kv_heads = SHAPE["hidden"], SHAPE["ffn"], SHAPE["layers"], SHAPE["heads"], SHAPE["kv_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in meta.items():
        if key.startswith("tokenizer."):
            if isinstance(value, list):
                writer.add_array(key, value)
            elif isinstance(value, str):
                writer.add_string(key, value)
            elif isinstance(value, bool):
                writer.add_bool(key, value)
            else:
                writer.add_uint32(key, value)
    writer.add_block_count(layers)
    writer.add_context_length(2048)
    writer.add_embedding_length(h)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(h // heads)
    qtype = gguf.GGMLQuantizationType(next(t.id for t in QUANT_TYPES.values() if t.name == kind))
    rng = np.random.default_rng(0)

    def matrix(name: str, rows: int, cols: int) -> None:
        values = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02)
        writer.add_tensor(name, encode(values, kind).reshape(rows, -1), raw_dtype=qtype)

    matrix("token_embd.weight", len(meta["tokenizer.ggml.tokens"]), h)
    kv = kv_heads * h // heads
    for i in range(layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(h, np.float32))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(h, np.float32))
        for name, rows, cols in (("attn_q", h, h), ("attn_k", kv, h), ("attn_v", kv, h), ("attn_output", h, h),
                                 ("ffn_gate", ffn, h), ("ffn_up", ffn, h), ("ffn_down", h, ffn)):
            matrix(p + name + ".weight", rows, cols)
    writer.add_tensor("output_norm.weight", np.ones(h, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
