"""``n`` choices of one request, sharing the prompt's prefill.

Choice 0 is the request's own sequence: it prefills the prompt as any
request does. When its first token comes back, the others fork from its KV
cache: a copy trimmed back to the prompt minus its last token, so each fork
starts with a one-token step and samples its own first token (with its own
seed stream). Models whose caches cannot be trimmed (sliding windows,
state-space layers) prefill the prompt once per choice instead.

Only choice 0 commits its KV to the conversation cache. Each choice's end
is reported with ``choice_finish_reason``; the request ends (its
``finish_reason`` and ``usage``) when the last choice does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol.messages import Usage

if TYPE_CHECKING:
    from .sequence import Sequence


@dataclass
class Choices:
    n: int
    members: list[Sequence] = field(default_factory=list)
    finished: int = 0
    forked: bool = False

    @property
    def leader(self) -> Sequence:
        return self.members[0]

    def live(self) -> list[Sequence]:
        return [s for s in self.members if not s.finished]

    def usage(self) -> Usage:
        """One prompt, every choice's completion tokens."""
        u = self.leader.usage()
        u.completion_tokens = sum(s.completion_tokens for s in self.members)
        u.decode_seconds = max(s.usage().decode_seconds for s in self.members)
        return u


def fork_caches(
    extract: Callable[[], list[Any]], n: int, prompt_tokens: int, final_cache: list[Any] | None
) -> list[list[Any] | None]:
    """``n`` private copies of the leader's cache holding all but the
    prompt's last token, or ``None`` each when the cache cannot be trimmed.
    ``extract()`` returns a copy of its cache from the running batch; a leader
    that already finished passes its ``final_cache`` instead."""
    from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

    out: list[list[Any] | None] = []
    for _ in range(n):
        if final_cache is not None:
            cache = copy.deepcopy(final_cache)
        else:
            cache = extract()
        if not can_trim_prompt_cache(cache):
            return [None] * n
        held = max(c.offset for c in cache if hasattr(c, "offset")) if any(hasattr(c, "offset") for c in cache) else None
        if held is None:
            return [None] * n
        trim_prompt_cache(cache, held - (prompt_tokens - 1))
        out.append(cache)
    return out
