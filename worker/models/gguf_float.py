"""Exact float32 weights for a converted GGUF folder, read from the GGUF file itself.

The folder's MLX triples round K-quant scales to 16 bits and requantize the
types MLX cannot hold exactly (Q2_K, Q3_K, Q6_K, IQ4_*), so dequantizing them
would not give llama.cpp's numbers. When the CPU backend wants float32, the
layers that came from such types are dequantized from the GGUF's own blocks
instead (`gguf_quants`, NumPy, a few threads). Layers whose triples are exact
(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 with float16 scales) are left to MLX's faster
dequantize.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .gguf_convert import CONVERTER_VERSION, read_source

# Types whose stored triples (float16 scales) dequantize to llama.cpp's values exactly.
_LOSSLESS_IN_FLOAT16 = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}


def exact_float_weights(folder: Path) -> dict[str, Any]:
    """{layer name: float32 weight} for the quantized layers whose stored form is not exact.

    Empty when the folder is not a current GGUF conversion or its GGUF file has
    changed or gone (then the stored form is all there is).
    """
    from .gguf_archs import architecture
    from .gguf_file import read_gguf
    from .gguf_tensors import float32_form

    source = read_source(folder)
    if not source or source.get("converter_version") != CONVERTER_VERSION or "source" not in source:
        return {}
    path = Path(source["source"])
    try:
        st = path.stat()
    except OSError:
        return {}
    if st.st_size != source.get("size") or st.st_mtime_ns != source.get("mtime_ns"):
        return {}
    try:
        info = read_gguf(path)
    except ModelLoadError:
        return {}
    arch = architecture(info.architecture)
    lossless = _LOSSLESS_IN_FLOAT16 if getattr(arch, "SCALE_DTYPE", "float16") == "float16" else set()
    plans = [
        p for p in arch.plan(info, arch.config(info))
        if p.source and p.target.endswith(".weight") and len(info.tensors[p.source].shape) == 2
        and info.tensors[p.source].type_name not in lossless | {"F32", "F16", "BF16"}
    ]
    # NumPy releases the GIL in its array loops: a few threads dequantize in parallel.
    with ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, 4))) as pool:
        arrays = list(pool.map(lambda p: float32_form(info, p), plans))
    return {p.layer: a for p, a in zip(plans, arrays)}
