"""Load time and memory of a GGUF model per tensor type: first start (conversion) vs cached.

    python -m bench gguf-load                       # every type, SmolLM2-135M re-encoded
    python -m bench gguf-load --types Q4_K Q6_K

For each type the default model's weights are written as a GGUF of that type
(bench/gguf_encode.py; matrices whose rows are not a multiple of 256 weights
fall back to the type llama.cpp's quantizer would pick, e.g. Q4_K -> Q5_0).
Each measurement runs in a fresh process with its own empty cache, so nothing
is shared between types:

    first     load_model(file): convert to the MLX folder, then the weights for
              this backend (CPU: float32 from the GGUF, stored for next time)
    cached    the same call again, in a new process: everything read from cache
    native    weights="native" from the cached conversion (what Metal/CUDA run)

Printed: seconds, the process's peak RSS, and MLX's active memory after load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

TYPES = ["Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "IQ4_NL", "IQ4_XS", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]
# llama.cpp's fallback for rows that are not a multiple of 256 weights.
FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_CHILD = """
import json, resource, sys, time
from worker.models import ensure_fast_blas
ensure_fast_blas(reexec=False)
import mlx.core as mx
from worker.models import load_model
start = time.perf_counter()
loaded = load_model(sys.argv[1], weights=sys.argv[2])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "weights": loaded.weights,
                  "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "active_gb": mx.get_active_memory() / 2**30}))
"""


def run(model_path: Path, types: list[str] | None = None) -> None:
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="kmlx-gguf-load-") as tmp:
        print(f"{'type':7s} {'file MB':>8s} {'first s':>8s} {'cached s':>9s} {'native s':>9s} "
              f"{'RSS GB (f32/native)':>20s}  in memory")
        for kind in types or TYPES:
            path = Path(tmp) / f"SmolLM2-{kind}.gguf"
            write_gguf(path, kind)
            env = {**os.environ, "KMLX_CACHE_DIR": str(Path(tmp) / f"cache-{kind}")}
            first = _child(root, env, path, "auto")
            cached = _child(root, env, path, "auto")
            native = _child(root, env, path, "native")
            print(f"{kind:7s} {path.stat().st_size / 1e6:8.0f} {first['seconds']:8.1f} {cached['seconds']:9.2f} "
                  f"{native['seconds']:9.2f} {cached['rss_gb']:9.2f} / {native['rss_gb']:.2f}     "
                  f"{cached['weights']} / {native['weights']}")
            path.unlink()


def _child(root: Path, env: dict[str, str], path: Path, weights: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), weights], cwd=root, env=env,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_gguf(path: Path, kind: str) -> None:
    """The default model's GGUF, its quantized matrices re-encoded as `kind`."""
    import gguf

    from bench.gguf_encode import encode
    from worker.models.default import ensure_default_gguf
    from worker.models.gguf_quants import QUANT_TYPES, dequantize_raw

    src = gguf.GGUFReader(ensure_default_gguf())
    writer = gguf.GGUFWriter(str(path), "llama")
    for field in src.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    by_name = {t.name: t for t in QUANT_TYPES.values()}
    for t in src.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        if t.tensor_type.name in ("F32", "F16") or len(shape) == 1:
            writer.add_tensor(t.name, np.asarray(t.data))
            continue
        values = dequantize_raw(np.asarray(t.data).view(np.uint8), t.tensor_type.value).reshape(shape)
        use = kind if shape[1] % by_name[kind].block == 0 else FALLBACK.get(kind, kind)
        raw = encode(values, use).reshape(shape[0], -1)
        writer.add_tensor(t.name, raw, raw_dtype=gguf.GGMLQuantizationType(by_name[use].id))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
