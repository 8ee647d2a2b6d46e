"""A tiny random-weight Qwen2-VL, built offline, for vision tests and benchmarks.

Everything is generated here: a byte-level BPE tokenizer trained on a fixed
text (with Qwen2-VL's special tokens), a Qwen2-VL-style chat template, the
image processor config, and weights from a fixed numpy seed. mlx-vlm loads it
like any Qwen2-VL checkpoint, so the worker runs its real vision path (image
processor, vision tower, mrope positions) at test speed. The output is noise,
but deterministic noise that depends on the image.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast

TINY_VLM_NAME = "kmlx-tiny-qwen2-vl"
TINY_VLM_VERSION = 1  # bump when anything below changes
SEED = 20240605
_MARKER = "kmlx-source.json"

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

TEXT_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
VISION_SHAPE = {
    "depth": 2,
    "embed_dim": 32,
    "num_heads": 2,
    "mlp_ratio": 2,
    "patch_size": 14,
    "spatial_patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "in_channels": 3,
}

# Qwen2-VL's prompt format: images become <|vision_start|><|image_pad|><|vision_end|>
# in place, and the processor expands the pad to one token per merged patch.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message.role != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'image' or part.type == 'image_url' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part.type == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif part.type == 'text' -%}{{ part.text }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Training text for the tokenizer: fixed, so every build yields the same merges.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.",
    "Describe this image in one sentence. What colour is the square? How many frames are there?",
    "You are a helpful assistant. The user sent an image and asked a question about it.",
    "In the video a red ball moves from the left to the right while the camera stays still.",
    "Hello, world! Numbers 0 1 2 3 4 5 6 7 8 9 and symbols - + = ( ) [ ] { } : ; , . ? !",
] * 4


def build_tiny_vlm(dest: Path | None = None) -> Path:
    """Build (or reuse) the tiny VLM in `dest` (default: the kmlx cache); return it."""
    from worker.models.cache import atomic_dir, discard_dir, file_lock, models_dir

    dest = Path(dest) if dest is not None else models_dir() / TINY_VLM_NAME
    if _is_current(dest):
        return dest
    with file_lock("tiny-vlm-" + hashlib.sha1(str(dest.resolve()).encode()).hexdigest()[:12]):
        if _is_current(dest):
            return dest
        if dest.exists():
            if not (dest / _MARKER).is_file():
                raise FileExistsError(f"{dest} exists and is not a kmlx tiny VLM; choose another folder")
            discard_dir(dest)
        with atomic_dir(dest) as tmp:
            ids = _write_tokenizer(tmp)
            config = _config(ids)
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            (tmp / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(), indent=2) + "\n")
            (tmp / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}) + "\n")
            (tmp / "generation_config.json").write_text(
                json.dumps({"eos_token_id": config["eos_token_id"]}) + "\n"
            )
            _save_weights(tmp, config)
            (tmp / _MARKER).write_text(json.dumps({"tiny_vlm_version": TINY_VLM_VERSION, "seed": SEED}) + "\n")
    return dest


def _is_current(folder: Path) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("tiny_vlm_version") == TINY_VLM_VERSION and (folder / "model.safetensors").is_file()


def _write_tokenizer(folder: Path) -> dict[str, int]:
    """A byte-level BPE (real merges, so token counts differ from characters)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    ids: dict[str, int] = {}
    for t in SPECIAL_TOKENS:
        tid = tok.token_to_id(t)
        assert tid is not None, f"{t} missing from the trained vocabulary"
        ids[t] = tid
    ids["vocab_size"] = tok.get_vocab_size()
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "processor_class": "Qwen2VLProcessor",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "model_max_length": 32768,
                "chat_template": CHAT_TEMPLATE,
                "added_tokens_decoder": {
                    str(ids[t]): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                  "normalized": False, "single_word": False}
                    for t in SPECIAL_TOKENS
                },
            },
            indent=2,
        )
        + "\n"
    )
    return ids


def _config(ids: dict[str, int]) -> dict[str, Any]:
    vocab = ids["vocab_size"]
    text = {
        **TEXT_SHAPE,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        # 3 sections (time, height, width) over head_dim/2 = 8 frequencies
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": True,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
    }
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        **text,
        "text_config": {"model_type": "qwen2_vl", **text},
        "vision_config": {"model_type": "qwen2_vl", "hidden_size": TEXT_SHAPE["hidden_size"], **VISION_SHAPE},
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "torch_dtype": "float32",
    }


def _preprocessor_config() -> dict[str, Any]:
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "patch_size": VISION_SHAPE["patch_size"],
        "temporal_patch_size": VISION_SHAPE["temporal_patch_size"],
        "merge_size": VISION_SHAPE["spatial_merge_size"],
        "min_pixels": 56 * 56,
        "max_pixels": 28 * 28 * 1280,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
    }


def _save_weights(folder: Path, config: dict[str, Any]) -> None:
    """Random weights of exactly the shapes mlx-vlm's Qwen2-VL expects.

    The shapes come from instantiating the model class itself, so they can't
    drift from what the loader checks; the values come from numpy's PCG64
    (stable across versions, unlike MLX's RNG).
    """
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_vlm.models.qwen2_vl import Model, ModelConfig
    from mlx_vlm.models.qwen2_vl.config import TextConfig, VisionConfig

    mc = ModelConfig.from_dict(dict(config))
    mc.text_config = TextConfig.from_dict(config["text_config"])
    mc.vision_config = VisionConfig.from_dict(config["vision_config"])
    shapes = {k: v.shape for k, v in cast("list[tuple[str, Any]]", tree_flatten(Model(mc).parameters()))}
    rng = np.random.default_rng(SEED)
    weights: dict[str, Any] = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight")):
            arr = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            arr = np.zeros(shape, np.float32)
        else:
            # Chosen by trying: large enough that greedy outputs differ from
            # image to image (and don't collapse into one repeated token),
            # small enough to stay finite.
            scale = 0.3 if name.startswith("vision_tower.") else 0.15
            arr = (rng.standard_normal(shape) * scale).astype(np.float32)
        weights[name] = mx.array(arr)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
