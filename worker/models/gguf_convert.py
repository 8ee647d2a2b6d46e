"""Convert a llama-architecture GGUF file into an MLX model folder mlx-lm loads.

The folder keeps the GGUF's own numbers: Q4_0/Q4_1/Q8_0 tensors stay
MLX-quantized (group size 32, per-layer bits in config.json), floats stay as
they are. Choosing what runs in memory (e.g. float32 on CPU) happens at load
time, so one cached conversion serves every backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

from .cache import atomic_dir
from .errors import ModelLoadError
from .gguf_file import GGUFInfo, read_bf16, read_gguf
from .gguf_tokenizer import write_tokenizer
from .progress import step

# Bump when the folder layout or any converted number changes: cached folders
# written by another version are converted again.
CONVERTER_VERSION = 1
SOURCE_FILE = "kmlx-source.json"
GGUF_GROUP_SIZE = 32
_MAX_SHARD_BYTES = 2 << 30

_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_SUFFIXES = (".weight", ".scales", ".biases", ".bias")


def convert_gguf(src: Path, dest: Path, *, extra_source: dict[str, Any] | None = None) -> Path:
    """Convert `src` into the folder `dest` (written atomically); return `dest`."""
    import mlx.core as mx

    with step(f"reading {src.name}"):
        info = read_gguf(src)
    config = build_config(info)
    with atomic_dir(dest) as tmp:
        with step(f"loading tensors of {src.name}"):
            try:
                tensors = cast("dict[str, mx.array]", mx.load(str(src)))  # a .gguf loads as a dict
            except (RuntimeError, ValueError) as exc:
                raise ModelLoadError(f"{src}: cannot load its tensors ({exc})") from exc
            for name, kind in info.tensor_types.items():
                if kind == "BF16":
                    tensors[name] = read_bf16(info, name)
        with step("mapping tensors to MLX layout"):
            weights = map_tensors(info, tensors, config)
            quant = _quantization_config(weights)
            if quant:
                config["quantization"] = quant
            mx.eval(list(weights.values()))
        with step(f"writing {dest.name}"):
            save_weights(tmp, weights)
            ids = write_tokenizer(info, tmp)
            config["bos_token_id"] = ids["bos"]
            config["eos_token_id"] = _eos_ids(info, ids)
            _write_json(tmp / "config.json", config)
            _write_json(tmp / "generation_config.json",
                        {"bos_token_id": ids["bos"], "eos_token_id": config["eos_token_id"]})
            st = src.stat()
            _write_json(tmp / SOURCE_FILE, {
                "converter_version": CONVERTER_VERSION,
                "source": str(src.resolve()),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                **(extra_source or {}),
            })
    return dest


def build_config(info: GGUFInfo) -> dict[str, Any]:
    """An mlx-lm / transformers llama config.json from the GGUF metadata."""
    name = info.path.name
    try:
        hidden = int(info.arch("embedding_length"))
        heads = int(info.arch("attention.head_count"))
        layers = int(info.arch("block_count"))
        ffn = int(info.arch("feed_forward_length"))
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{name}: GGUF lacks the llama shape keys ({exc})") from exc
    kv_heads = int(info.arch("attention.head_count_kv", heads))
    head_dim = int(info.arch("attention.key_length", hidden // heads))
    rope_dims = int(info.arch("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ModelLoadError(f"{name}: partial rotary embeddings ({rope_dims} of {head_dim}) are not supported")
    if any(n.endswith("_exps.weight") for n in info.tensor_types):
        raise ModelLoadError(f"{name}: mixture-of-experts llama GGUFs are not supported")
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float(info.arch("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(info.arch("rope.freq_base", 10000.0)),
        "rope_traditional": False,  # q/k rows are un-permuted back to the HF layout
        "max_position_embeddings": int(info.arch("context_length", 4096)),
        "vocab_size": len(info.get("tokenizer.ggml.tokens") or []) or int(info.arch("vocab_size")),
        "tie_word_embeddings": "output.weight" not in info.tensor_types,
        "attention_bias": "blk.0.attn_q.bias" in info.tensor_types,
        "mlp_bias": False,
    }
    scaling = info.arch("rope.scaling.type")
    if "rope_freqs.weight" in info.tensors:  # Llama 3.1+: parameters baked into a tensor
        from .gguf_rope import rope_scaling_from_freqs

        config["rope_scaling"] = rope_scaling_from_freqs(info, head_dim, config["rope_theta"])
    elif scaling and scaling != "none":
        factor = float(info.arch("rope.scaling.factor", 1.0))
        if scaling != "linear":
            raise ModelLoadError(f"{name}: rope scaling {scaling!r} is not supported (only 'linear')")
        config["rope_scaling"] = {"type": "linear", "factor": factor}
    return config


def map_tensors(info: GGUFInfo, tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """GGUF tensor names -> mlx-lm names, undoing llama.cpp's q/k row permutation."""
    out: dict[str, Any] = {}
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    for gname, value in tensors.items():
        base, suffix = _split_suffix(gname)
        parts = base.split(".")
        if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER:
            target = f"model.layers.{parts[1]}.{_LAYER[parts[2]]}"
            if parts[2] in heads:
                value = unpermute_rows(value, heads[parts[2]])
        elif base == "rope_freqs":
            continue  # became config["rope_scaling"]
        elif base in _TOP:
            target = _TOP[base]
        else:
            raise ModelLoadError(f"{info.path.name}: unexpected tensor {gname!r} for a llama model")
        out[target + suffix] = value
    if config["attention_bias"]:
        # HF/mlx-lm llama puts a bias on q, k, v *and* o when attention_bias is
        # set; GGUFs with q/k/v biases only get a zero o_proj bias.
        import mlx.core as mx

        for i in range(config["num_hidden_layers"]):
            out.setdefault(f"model.layers.{i}.self_attn.o_proj.bias", mx.zeros((config["hidden_size"],)))
    if "model.embed_tokens.weight" not in out:
        raise ModelLoadError(f"{info.path.name}: the GGUF has no token_embd tensor")
    return out


def unpermute_rows(x: Any, n_head: int) -> Any:
    """Inverse of llama.cpp's `reshape(n_head, 2, rows//n_head//2, ...).swapaxes(1, 2)`.

    Works on any row-major tensor whose axis 0 is the output row: float weights,
    packed uint32 weights, their scales and biases, and bias vectors alike.
    """
    rows = x.shape[0]
    if rows % (2 * n_head):
        raise ModelLoadError(f"cannot un-permute {rows} rows over {n_head} heads")
    tail = tuple(x.shape[1:])
    return x.reshape(n_head, rows // n_head // 2, 2, *tail).swapaxes(1, 2).reshape(rows, *tail)


def _split_suffix(name: str) -> tuple[str, str]:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def _quantization_config(weights: dict[str, Any]) -> dict[str, Any]:
    """mlx-lm's `quantization` entry: a default plus each layer that differs."""
    bits: dict[str, int] = {}
    for key, scales in weights.items():
        if key.endswith(".scales"):
            layer = key[: -len(".scales")]
            in_dims = scales.shape[-1] * GGUF_GROUP_SIZE
            bits[layer] = weights[f"{layer}.weight"].shape[-1] * 32 // in_dims
    if not bits:
        return {}
    values = list(bits.values())
    common = max(set(values), key=values.count)
    quant: dict[str, Any] = {"group_size": GGUF_GROUP_SIZE, "bits": common, "mode": "affine"}
    for layer, b in bits.items():
        if b != common:
            quant[layer] = {"group_size": GGUF_GROUP_SIZE, "bits": b, "mode": "affine"}
    return quant


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


def is_current(folder: Path, *, sha256: str | None = None) -> bool:
    """True when `folder` is a complete conversion by this converter version."""
    try:
        source = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    if source.get("converter_version") != CONVERTER_VERSION:
        return False
    return sha256 is None or source.get("sha256") == sha256
