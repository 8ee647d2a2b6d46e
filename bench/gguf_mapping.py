"""How far each GGUF type's MLX form (what Metal and CUDA run) is from the type's own values.

    python -m bench gguf                      # every type, SmolLM2's weights, 3 prompts
    python -m bench gguf --types Q6_K Q3_K    # some types, every candidate MLX form

For each GGUF type every weight matrix of the default model's layers
(SmolLM2-135M) is encoded as that type (bench/gguf_encode.py) and decoded
again; its tied embedding/output matrix is Q8_0 throughout (as llama.cpp's
"_M" mixes keep it at higher precision; a 135M model does not survive a
2-bit output head). That float32 model is the reference, exactly what the CPU
backend runs.
Then each candidate MLX form is built from the same blocks, as
worker/models/gguf_affine.py builds it (exact repacking where the type allows,
MLX's own quantizer otherwise; float16 scales), and run on the same prompts on
this machine's MLX backend. Printed per form: the logits' relative RMS error,
their largest error, how often the top token agrees, the mean KL divergence
of the next-token distributions, and the weights' relative RMS error; plus,
for scale, how far the type itself is from the original float weights (its
own quantization error).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

PROMPTS = [
    "The history of cartography is the story of how people have described the world around them. Early maps",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n",
]
TYPES = ["Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "IQ4_NL", "IQ4_XS", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]
# Other forms measured for the types that are requantized, to justify the choice in REQUANTIZE.
CANDIDATES = {"Q2_K": [(4, 32), (5, 32), (6, 32)], "Q3_K": [(4, 32), (5, 32), (6, 32)],
              "Q6_K": [(6, 32), (8, 32), (8, 64)], "IQ4_NL": [(4, 32), (5, 32), (6, 32), (8, 32)],
              "IQ4_XS": [(4, 32), (5, 32), (6, 32), (8, 32)]}


def run(model_path: Path, types: list[str] | None = None) -> None:
    import mlx.core as mx

    from worker.models import load_model

    base = load_model(str(model_path), weights="float32")
    tok = base.tokenizer
    prompts = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
    original = _matrices(base.model)
    original_logits = _logits(base.model, prompts)
    print(f"{base.model_id}: {len(original)} matrices, {sum(v.size for v in original.values()) / 1e6:.0f} M weights; "
          f"{sum(len(p) for p in prompts)} prompt tokens; MLX device {mx.default_device()}")
    print(f"{'type':7s} {'MLX form':13s} {'rel RMS':>8s} {'max abs':>8s} {'top-1':>6s} {'KL':>9s} {'weights':>8s}"
          "   notes")
    for kind in types or TYPES:
        start = time.perf_counter()
        blocks = {name: _encode(w, "Q8_0" if "embed" in name else kind) for name, w in original.items()}
        reference = _with_weights(base.model, {n: _dequantized(b, w.shape) for (n, b), w in
                                               zip(blocks.items(), original.values())})
        ref_logits = _logits(reference, prompts)
        own = _compare(ref_logits, original_logits)
        print(f"{kind:7s} {'(the type)':13s} {own} {'':8s}   the type vs the original float weights")
        for bits, group in _forms(kind):
            mapped, weight_error = _with_affine(reference, blocks, original, kind, bits, group)
            exact = "exact repack" if (bits, group) == _exact(kind) else "requantized"
            chosen = "  <- kmlx" if (bits, group) == _chosen(kind) else ""
            print(f"{kind:7s} {f'q{bits} g{group}':13s} {_compare(_logits(mapped, prompts), ref_logits)} "
                  f"{weight_error:8.4f}   {exact}{chosen}")
        print(f"{'':7s} ({time.perf_counter() - start:.0f} s)")


def _exact(kind: str) -> tuple[int, int] | None:
    from worker.models.gguf_affine import EXACT

    return (EXACT[kind], 32) if kind in EXACT else None


def _chosen(kind: str) -> tuple[int, int]:
    from worker.models.gguf_affine import mapping

    bits, group, _ = mapping(kind)
    return bits, group


def _forms(kind: str) -> list[tuple[int, int]]:
    return CANDIDATES.get(kind, [_chosen(kind)])


def _matrices(model: Any) -> dict[str, np.ndarray]:
    from mlx import nn

    return {name: np.array(m.weight) for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.size % 256 == 0}


def _encode(w: np.ndarray, kind: str) -> Any:
    """The matrix as `kind` blocks (rows laid end to end, as if each were a multiple of 256 long)."""
    from bench.gguf_encode import encode
    from worker.models.gguf_quants import QUANT_TYPES, decode

    type_id = next(t.id for t in QUANT_TYPES.values() if t.name == kind)
    return decode(encode(w, kind), type_id)


def _dequantized(blocks: Any, shape: tuple[int, ...]) -> np.ndarray:
    from worker.models.gguf_quants import dequantize

    return dequantize(blocks).reshape(shape)


def _with_weights(model: Any, weights: dict[str, np.ndarray]) -> Any:
    import copy

    import mlx.core as mx

    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    for name, w in weights.items():
        modules[name].weight = mx.array(w)
    mx.eval(clone.parameters())
    return clone


def _with_affine(model: Any, blocks: dict[str, Any], original: dict[str, np.ndarray], kind: str,
                 bits: int, group: int) -> tuple[Any, float]:
    """A copy of `model` whose `kind` matrices are MLX-quantized from their blocks, as the
    converter would, and the relative RMS error of those weights."""
    import copy

    import mlx.core as mx
    from mlx import nn
    from mlx.utils import tree_unflatten

    from worker.models.gguf_affine import to_affine

    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    replaced = []
    squared, total = 0.0, 0.0
    for name, b in blocks.items():
        if "embed" in name:
            continue
        q = to_affine(b, original[name].shape, kind, mx.float16, form=(bits, group))
        w = np.array(mx.dequantize(q.weight, q.scales.astype(mx.float32), q.biases.astype(mx.float32),
                                   group_size=q.group_size, bits=q.bits))
        expected = _dequantized(b, w.shape)
        squared, total = squared + float(((w - expected) ** 2).sum()), total + float((expected**2).sum())
        m = modules[name]
        if isinstance(m, nn.Embedding):
            new = nn.QuantizedEmbedding.from_embedding(m, group_size=q.group_size, bits=q.bits)
        else:
            new = nn.QuantizedLinear.from_linear(m, group_size=q.group_size, bits=q.bits)
        new.weight, new.scales, new.biases = q.weight, q.scales, q.biases
        replaced.append((name, new))
    clone.update_modules(tree_unflatten(replaced))
    mx.eval(clone.parameters())
    return clone, (squared / total) ** 0.5


def _logits(model: Any, prompts: list[list[int]]) -> list[np.ndarray]:
    import mlx.core as mx

    return [np.array(model(mx.array([p]))[0].astype(mx.float32), dtype=np.float64) for p in prompts]


def _compare(got: list[np.ndarray], expected: list[np.ndarray]) -> str:
    g, e = np.concatenate(got), np.concatenate(expected)
    rel = np.sqrt(np.mean((g - e) ** 2) / np.mean(e**2))
    top1 = np.mean(g.argmax(-1) == e.argmax(-1))
    pe, pg = _softmax(e), _softmax(g)
    kl = np.mean(np.sum(pe * (np.log(pe + 1e-30) - np.log(pg + 1e-30)), axis=-1))
    return f"{rel:8.4f} {np.abs(g - e).max():8.3f} {top1:6.1%} {kl:9.2e}"


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)
