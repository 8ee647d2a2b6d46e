"""Convert a GGUF file into an MLX model folder mlx-lm loads.

The architecture module (`gguf_archs/<arch>.py`) says which mlx-lm model runs
the file and where each tensor goes; the folder stores each tensor in its
"stored form" (`gguf_tensors`): floats as they are, quantized types as MLX
affine triples (exact where the GGUF type allows, `gguf_affine`). That is what
Metal and CUDA run. The CPU backend runs float32 instead, dequantized from the
GGUF file itself (`gguf_float`), so its numbers are llama.cpp's exactly.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .cache import atomic_dir
from .gguf_archs import architecture
from .gguf_file import GGUFInfo, read_gguf
from .gguf_tokenizer import write_tokenizer
from .progress import say, step

# Bump when the folder layout or any converted number changes: cached folders
# written by another version are converted again.
CONVERTER_VERSION = 1
SOURCE_FILE = "kmlx-source.json"
_MAX_SHARD_BYTES = 2 << 30
_PROGRESS_SECONDS = 10.0


def convert_gguf(src: Path, dest: Path, *, extra_source: dict[str, Any] | None = None) -> Path:
    """Convert `src` into the folder `dest` (written atomically); return `dest`."""
    with step(f"reading {src.name}"):
        info = read_gguf(src)
    arch = architecture(info.architecture, src.name)
    config = arch.config(info)
    plans = arch.plan(info, config)
    with atomic_dir(dest) as tmp:
        with step(f"converting the {len(plans)} tensors of {src.name} ({info.architecture})"):
            weights, quant = stored_weights(info, plans, getattr(arch, "SCALE_DTYPE", "float16"))
            if quant:
                config["quantization"] = quantization_config(quant)
        with step(f"writing {dest.name}"):
            save_weights(tmp, weights)
            ids = write_tokenizer(info, tmp)
            config["bos_token_id"] = ids["bos"]
            config["eos_token_id"] = _eos_ids(info, ids)
            config["pad_token_id"] = ids["pad"]
            _write_json(tmp / "config.json", config)
            _write_json(tmp / "generation_config.json",
                        {"bos_token_id": ids["bos"], "eos_token_id": config["eos_token_id"]})
            st = src.stat()
            _write_json(tmp / SOURCE_FILE, {
                "converter_version": CONVERTER_VERSION,
                "source": str(src.resolve()),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "tensor_types": _type_counts(info),
                **(extra_source or {}),
            })
    return dest


def stored_weights(info: GGUFInfo, plans: list[Any], scale_dtype: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every planned tensor in its stored form, plus each quantized layer's (bits, group size)."""
    import mlx.core as mx

    from .gguf_tensors import stored_form

    weights: dict[str, Any] = {}
    quant: dict[str, tuple[int, int]] = {}
    last = time.monotonic()
    for i, plan in enumerate(plans):
        parts, bits = stored_form(info, plan, getattr(mx, scale_dtype))
        mx.eval(list(parts.values()))  # one tensor at a time: the graph stays small
        weights.update(parts)
        if bits:
            quant[plan.layer] = bits
        if time.monotonic() - last > _PROGRESS_SECONDS:
            say(f"  {i + 1}/{len(plans)} tensors")
            last = time.monotonic()
    return weights, quant


def quantization_config(layers: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """mlx-lm's `quantization` entry: the commonest (bits, group size) plus each layer that differs."""
    values = list(layers.values())
    bits, group = max(set(values), key=values.count)
    quant: dict[str, Any] = {"group_size": group, "bits": bits, "mode": "affine"}
    for layer, (b, g) in layers.items():
        if (b, g) != (bits, group):
            quant[layer] = {"group_size": g, "bits": b, "mode": "affine"}
    return quant


def _type_counts(info: GGUFInfo) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in info.tensor_types.values():
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def _eos_ids(info: GGUFInfo, ids: dict[str, int | None]) -> int | list[int] | None:
    eos = [ids["eos"]] if ids["eos"] is not None else []
    eot = info.get("tokenizer.ggml.eot_token_id")
    if eot is not None and int(eot) not in eos:
        eos.append(int(eot))
    return eos[0] if len(eos) == 1 else (eos or None)


def save_weights(folder: Path, weights: dict[str, Any]) -> None:
    """safetensors shards of at most 2 GiB, named as mlx-lm's loader expects."""
    import mlx.core as mx

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key in sorted(weights):
        nbytes = weights[key].nbytes
        if shards[-1] and size + nbytes > _MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = weights[key]
        size += nbytes
    for i, shard in enumerate(shards):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(folder / name), shard, metadata={"format": "mlx"})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.chmod(path, 0o644)


def read_source(folder: Path) -> dict[str, Any] | None:
    try:
        source = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return source if isinstance(source, dict) else None


def is_current(folder: Path, *, sha256: str | None = None) -> bool:
    """True when `folder` is a complete conversion by this converter version."""
    source = read_source(folder)
    if source is None or source.get("converter_version") != CONVERTER_VERSION:
        return False
    return sha256 is None or source.get("sha256") == sha256
