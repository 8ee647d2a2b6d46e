"""The routing rule: which of a model's workers serves one request.

Pure functions over a snapshot of the candidates, so the rule is the same in
every gateway and can be tested without sockets.

- **Affinity** (the request belongs to a conversation): rendezvous hashing
  ranks the workers by ``hash(key, worker_id)``; every gateway computes the
  same ranking from the same healthy set, with no shared store. When a
  worker leaves or joins, only the conversations it ranks first move.
- **Bounded load**: the first-ranked worker is skipped when it is far busier
  than the mean (``load > max(spill_factor * mean, its batch size)``) or its
  queue is full; the next-ranked one is tried. Spilling costs the
  conversation a re-prefill on the other worker, so the bound is generous: a
  worker that still has free batch slots is never "busy".
- **No affinity**: the least-loaded worker whose queue is not full; ties
  rotate so an idle pool still spreads new work.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """What the rule needs to know about one ready worker."""

    worker_id: str
    load: int  # running + waiting sequences, this gateway's best estimate
    slack: int = 0  # load below which the worker never counts as busy (its batch size)
    full: bool = False  # its queue is at a limit, from this gateway's view


def rendezvous_score(key: str, worker_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\x00{worker_id}".encode(), digest_size=8).digest(), "big")


def rendezvous_order(key: str, worker_ids: Sequence[str]) -> list[int]:
    """Indices of ``worker_ids``, the key's preferred worker first."""
    return sorted(range(len(worker_ids)), key=lambda i: rendezvous_score(key, worker_ids[i]), reverse=True)


def load_bound(cands: Sequence[Candidate], spill_factor: float) -> float:
    """Highest load a worker may reach with this request before it spills.
    The ``+ 1`` counts the request being placed."""
    mean = (sum(c.load for c in cands) + 1) / len(cands)
    return spill_factor * mean


def pick(cands: Sequence[Candidate], key: str | None, *, spill_factor: float = 1.5, rotate: int = 0) -> tuple[int, bool] | None:
    """``(index, spilled)`` of the worker to use, or ``None`` when every
    queue is full. ``spilled`` is true when an affine request did not get
    its first-ranked worker."""
    if not cands:
        return None
    if key is not None:
        bound = load_bound(cands, spill_factor)
        order = rendezvous_order(key, [c.worker_id for c in cands])
        for rank, i in enumerate(order):
            c = cands[i]
            if not c.full and c.load + 1 <= max(math.ceil(bound), c.slack):
                return i, rank > 0
        # Every worker is over the bound (tiny pools, odd views): fall through
        # to the least-loaded one rather than refusing work.
        best = least_loaded(cands, rotate)
        return None if best is None else (best, best != order[0])
    best = least_loaded(cands, rotate)
    return None if best is None else (best, False)


def least_loaded(cands: Sequence[Candidate], rotate: int = 0) -> int | None:
    n = len(cands)
    open_ = [(cands[i].load, (i - rotate) % n, i) for i in range(n) if not cands[i].full]
    return min(open_)[2] if open_ else None
