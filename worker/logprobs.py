"""Log-probabilities of generated tokens, and the most likely alternatives.

mlx-lm's batch hands back, with each sampled token, the sequence's
log-probability vector for that position (after its logits processors:
logit_bias, penalties, a grammar mask; before temperature and top-p/top-k).
One step's requests are read together: one top-k over the stacked vectors,
one device sync.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import mlx.core as mx

from protocol.messages import TokenLogprob, TopLogprob

# JSON has no -inf; OpenAI reports unreachable tokens' log-probabilities as -9999.
FLOOR = -9999.0


class TokenBytes:
    """A token id's raw bytes (a token can hold part of a UTF-8 character),
    from llguidance's view of the tokenizer when it is built, else from the
    tokenizer's own decoding; memoised."""

    def __init__(self, tokenizer: Any, exact: Callable[[], Any | None]):
        self._tokenizer = tokenizer
        self._exact = exact  # returns llguidance's tokenizer, or None while unavailable
        self._memo: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        got = self._memo.get(token_id)
        if got is None:
            llg = self._exact()
            if llg is not None:
                got = llg.decode_bytes([token_id])
            else:
                got = self._tokenizer.decode([token_id]).encode("utf-8", "surrogatepass")
            if len(self._memo) < 200_000:
                self._memo[token_id] = got
        return got


def read_logprobs(entries: list[tuple[int, mx.array, int]], token_bytes: TokenBytes) -> list[TokenLogprob]:
    """``entries``: (sampled token, its position's log-probability vector,
    how many alternatives to report) -> one TokenLogprob each."""
    if not entries:
        return []
    vectors = mx.stack([e[1].reshape(-1) for e in entries]).astype(mx.float32)
    tokens = mx.array([e[0] for e in entries])
    chosen = mx.take_along_axis(vectors, tokens[:, None], axis=-1)[:, 0]
    k = max(e[2] for e in entries)
    if k > 0:
        top_ids = mx.argpartition(-vectors, kth=k - 1, axis=-1)[:, :k]
        top_vals = mx.take_along_axis(vectors, top_ids, axis=-1)
        mx.eval(chosen, top_ids, top_vals)
        ids_rows = cast(list[list[int]], top_ids.tolist())
        vals_rows = cast(list[list[float]], top_vals.tolist())
    else:
        mx.eval(chosen)
        ids_rows, vals_rows = [[] for _ in entries], [[] for _ in entries]
    out: list[TokenLogprob] = []
    chosen_values = cast(list[float], chosen.tolist())
    for (token, _vec, want), lp, ids, vals in zip(entries, chosen_values, ids_rows, vals_rows):
        ranked = sorted(zip(vals, ids), reverse=True)[:want]
        top = [TopLogprob(int(i), _finite(v), token_bytes(int(i))) for v, i in ranked]
        out.append(TokenLogprob(token, _finite(lp), token_bytes(token), top))
    return out


def _finite(x: float) -> float:
    return x if x > FLOOR else FLOOR
