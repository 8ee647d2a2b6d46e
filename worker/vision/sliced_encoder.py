"""Qwen2-VL's vision tower in bounded slices, one slice per compute-loop turn.

The tower attends over every patch of an image at once: ~4900 patches for
1 MP, seconds of work on a small CPU. Run in one piece it stalls every text
stream for that long, whichever thread runs it (MLX throttles all threads
on a process-wide count of in-flight tasks, and on the CPU backend one
attention op is one task). Sliced here — the patch embedding, then per
block: qkv, attention for ``rows`` query rows at a time (exact: softmax is
per query row), then projection + MLP — every slice is short, and the
scheduler interleaves slices with batch steps. Same modules and weights as
mlx-vlm's ``VisionModel.__call__``; a test checks the result equals it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import mlx.core as mx


def supports(vision_tower: Any) -> bool:
    """The Qwen2-VL tower (mlx_vlm.models.qwen2_vl.vision.VisionModel) only."""
    return type(vision_tower).__module__.endswith("qwen2_vl.vision") and hasattr(vision_tower, "blocks")


@dataclass
class _State:
    hidden: mx.array  # (patches, dim)
    rotary: mx.array
    segments: list[tuple[int, int]]  # [start, end) per image frame: attention stays inside
    block: int = 0
    q: mx.array | None = None  # (1, heads, patches, head_dim) of the current block
    k: mx.array | None = None
    v: mx.array | None = None
    done_rows: int = 0  # query rows of the current block's attention done
    outs: list[mx.array] = field(default_factory=list)


class SlicedEncoder:
    """``start`` then ``step`` until it returns the merged image features."""

    def __init__(self, vision_tower: Any, rows: int):
        from mlx_vlm.models.qwen2_vl.vision import apply_rotary_pos_emb_vision

        self.vt = vision_tower
        self.rows = max(16, rows)
        self._rotate = apply_rotary_pos_emb_vision

    def start(self, pixel_values: mx.array, grid_thw: mx.array) -> _State:
        vt = self.vt
        dtype = vt.patch_embed.proj.weight.dtype
        hidden = vt.patch_embed(pixel_values.astype(dtype))
        rotary = vt.rot_pos_emb(grid_thw)
        segments, start = [], 0
        for t, h, w in cast("list[list[int]]", grid_thw.tolist()):
            for _ in range(int(t)):
                segments.append((start, start + int(h) * int(w)))
                start += int(h) * int(w)
        mx.eval(hidden, rotary)
        return _State(hidden, rotary, segments)

    def step(self, s: _State) -> mx.array | None:
        """One bounded slice; the merged features once the last block is done."""
        blk = self.vt.blocks[s.block]
        attn = blk.attn
        if s.q is None:  # qkv + rotary for this block
            n = s.hidden.shape[0]
            qkv = attn.qkv(blk.norm1(s.hidden)).reshape(n, 3, attn.num_heads, -1).transpose(1, 0, 2, 3)
            q, k, v = mx.split(qkv, 3)
            q = self._rotate(mx.expand_dims(q, 0), s.rotary)[0]
            k = self._rotate(mx.expand_dims(k, 0), s.rotary)[0]
            s.q, s.k, s.v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
            mx.eval(s.q, s.k, s.v)
            return None
        n = s.hidden.shape[0]
        assert s.k is not None and s.v is not None
        if s.done_rows < n:  # attention for the next query rows, inside their segment
            a = s.done_rows
            seg_start, seg_end = next((x, y) for x, y in s.segments if x <= a < y)
            b = min(a + self.rows, seg_end)
            out = mx.fast.scaled_dot_product_attention(
                s.q[:, :, a:b], s.k[:, :, seg_start:seg_end], s.v[:, :, seg_start:seg_end], scale=attn.scale, mask=None
            )
            mx.eval(out)
            s.outs.append(out)
            s.done_rows = b
            return None
        out = mx.concatenate(s.outs, axis=2).transpose(0, 2, 1, 3).reshape(n, -1)
        hidden = s.hidden + attn.proj(out)
        hidden = hidden + blk.mlp(blk.norm2(hidden))
        mx.eval(hidden)
        s.hidden, s.q, s.k, s.v, s.done_rows, s.outs = hidden, None, None, None, 0, []
        s.block += 1
        if s.block < len(self.vt.blocks):
            return None
        merged = self.vt.merger(s.hidden)
        mx.eval(merged)
        return merged
