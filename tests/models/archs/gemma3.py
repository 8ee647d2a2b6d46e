"""gemma3: gemma2's block plus per-head q/k norms, no soft-capping, and
sliding-window layers (rope base 10000) between global ones (the file's rope
base, linear scaling). Written with a window of 4 tokens and every 2nd layer
global, so a short prompt exercises both kinds of layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from . import common
from .gemma2 import gemma_forward, write_layers

SHAPE: dict[str, Any] = {"hidden": 256, "ffn": 512, "layers": 2, "heads": 4, "kv_heads": 1, "head_dim": 64,
         "rope_base": 1000000.0, "context": 32768}
WINDOW, PATTERN, LOCAL_BASE, SCALE = 4, 2, 10000.0, 8.0


def write(path: Path, tokenizer_meta: dict[str, Any], *, types: tuple[Q, ...] = common.ALL_TYPES, seed: int = 7,
          tokenizer_model: str = "gpt2") -> Path:
    s = common.start(path, "gemma3", SHAPE, tokenizer_meta, types, seed, tokenizer_model)
    s.writer.add_sliding_window(WINDOW)
    s.writer.add_sliding_window_pattern(PATTERN)
    s.writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    s.writer.add_rope_scaling_factor(SCALE)
    write_layers(s, SHAPE, tokenizer_meta, qk_norm=True)
    return common.finish(s, path)


def forward(meta: dict[str, Any], w: dict[str, np.ndarray], ids: list[int], *, windows: bool = True) -> np.ndarray:
    def is_global(i: int) -> bool:
        return (i + 1) % PATTERN == 0

    def layer_rope(i: int) -> dict[str, Any]:
        return {"positions_scale": 1 / SCALE} if is_global(i) else {"base": LOCAL_BASE}

    return gemma_forward(meta, w, ids, attn_cap=0.0, final_cap=0.0, layer_rope=layer_rope,
                         window_of=lambda i: 0 if is_global(i) or not windows else WINDOW)
