"""What the architecture modules share: the plan entry, the GGUF keys every
architecture has, rope scaling, and the walk over a file's tensors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ModelLoadError
from ..gguf_file import GGUFInfo

TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# llama.cpp's llama, qwen2, qwen3 and mistral layers.
LLAMA_LAYER = {
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
_SUFFIXES = (".weight", ".bias")


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor and the mlx-lm parameter it becomes."""

    source: str  # GGUF name, e.g. "blk.0.attn_q.weight"
    target: str  # mlx-lm name, e.g. "model.layers.0.self_attn.q_proj.weight"
    unpermute_heads: int = 0  # undo llama.cpp's rotary row permutation over this many heads
    add: float = 0.0  # added to the values (Gemma stores its norms as 1 + weight)
    zeros: tuple[int, ...] = ()  # no source: a zero tensor of this shape (a bias mlx-lm expects)

    @property
    def layer(self) -> str:
        """The module path, e.g. "model.layers.0.self_attn.q_proj"."""
        return self.target.rsplit(".", 1)[0]


def name_of(info: GGUFInfo) -> str:
    return info.path.name


def shape_config(info: GGUFInfo) -> dict[str, Any]:
    """The keys every architecture has, as Hugging Face config names."""
    try:
        hidden = _single(info, "embedding_length")
        heads = _single(info, "attention.head_count")
        layers = _single(info, "block_count")
        ffn = _single(info, "feed_forward_length")
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{name_of(info)}: GGUF lacks the model shape keys ({exc})") from exc
    head_dim = int(info.arch("attention.key_length", hidden // heads))
    if int(info.arch("attention.value_length", head_dim)) != head_dim:
        raise ModelLoadError(f"{name_of(info)}: different key and value head sizes are not supported")
    embed = info.tensors.get("token_embd.weight")
    if embed is None:
        raise ModelLoadError(f"{name_of(info)}: the GGUF has no token_embd tensor")
    if any(n.endswith("_exps.weight") for n in info.tensors):
        raise ModelLoadError(f"{name_of(info)}: mixture-of-experts GGUFs are not supported")
    return {
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": _single(info, "attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": float(info.arch("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(info.arch("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(info.arch("context_length", 4096)),
        "vocab_size": embed.shape[0],
        "tie_word_embeddings": "output.weight" not in info.tensors,
    }


def _single(info: GGUFInfo, key: str, default: Any = None) -> int:
    """An integer key; per-layer lists are accepted when all layers agree."""
    value = info.arch(key, default)
    if value is None:
        raise ValueError(f"no {info.architecture}.{key}")
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise ModelLoadError(f"{name_of(info)}: a different {key} per layer is not supported")
        value = value[0]
    return int(value)


def require_full_rotary(info: GGUFInfo, head_dim: int) -> None:
    dims = int(info.arch("rope.dimension_count", head_dim))
    if dims != head_dim:
        raise ModelLoadError(
            f"{name_of(info)}: partial rotary embeddings ({dims} of {head_dim}) are not supported "
            f"for {info.architecture}"
        )


def rope_scaling(info: GGUFInfo) -> dict[str, Any] | None:
    """`rope_scaling` from the rope.scaling.* keys (linear and YaRN); None when unscaled."""
    kind = info.arch("rope.scaling.type")
    if not kind or kind == "none":
        return None
    factor = float(info.arch("rope.scaling.factor", 1.0))
    if kind == "linear":
        return None if factor == 1.0 else {"rope_type": "linear", "factor": factor}
    if kind == "yarn":
        scaling: dict[str, Any] = {"rope_type": "yarn", "factor": factor}
        original = info.arch("rope.scaling.original_context_length")
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    raise ModelLoadError(f"{name_of(info)}: rope scaling {kind!r} is not supported (only 'linear' and 'yarn')")


def plan_tensors(
    info: GGUFInfo,
    layer: dict[str, str],
    *,
    top: dict[str, str] = TOP_LEVEL,
    skip: Iterable[str] = (),
    unpermute: dict[str, int] | None = None,
    norm_add: float = 0.0,
    biases: bool = True,
) -> list[TensorPlan]:
    """Map every tensor of the file; one that has no place is an error, never dropped.

    unpermute: GGUF layer part -> heads, for llama.cpp's permuted q/k rows.
    norm_add: added to every "*_norm" tensor (Gemma's 1 + weight).
    biases: whether the mlx-lm model has bias vectors at all.
    """
    skipped = set(skip)
    plans = []
    for name in info.tensors:
        base, suffix = _split_suffix(name)
        if base in skipped:
            continue
        if suffix == ".bias" and not biases:
            raise ModelLoadError(f"{name_of(info)}: unexpected tensor {name!r}: {info.architecture} has no biases")
        parts = base.split(".")
        if len(parts) == 3 and parts[0] == "blk" and parts[2] in layer:
            target = f"model.layers.{parts[1]}.{layer[parts[2]]}"
            heads = (unpermute or {}).get(parts[2], 0)
            kind = parts[2]
        elif base in top:
            target, heads, kind = top[base], 0, base
        else:
            raise ModelLoadError(f"{name_of(info)}: unexpected tensor {name!r} for a {info.architecture} model")
        add = norm_add if kind.endswith("norm") and suffix == ".weight" else 0.0
        plans.append(TensorPlan(name, target + suffix, heads, add))
    return plans


def _split_suffix(name: str) -> tuple[str, str]:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def zero_biases(config: dict[str, Any], plans: list[TensorPlan], parts: dict[str, int]) -> list[TensorPlan]:
    """Zero biases for the layers mlx-lm gives one but the file has none (part -> size)."""
    have = {p.target for p in plans}
    extra = []
    for i in range(config["num_hidden_layers"]):
        for part, size in parts.items():
            target = f"model.layers.{i}.{part}.bias"
            if target not in have:
                extra.append(TensorPlan("", target, zeros=(size,)))
    return plans + extra
