"""Progress for the slow, one-time steps (download, conversion, tiny-model build).

Log lines through the `kmlx.models` logger, so the worker's log shows them; when
nobody configured logging they still reach stderr, because a first start that
silently spends a minute converting looks hung.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

log = logging.getLogger("kmlx.models")


def say(message: str) -> None:
    if logging.getLogger().handlers or log.handlers:
        log.info(message)
    else:
        print(f"kmlx: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Announce a slow step and how long it took."""
    say(f"{what} ...")
    start = time.perf_counter()
    yield
    say(f"{what}: done in {time.perf_counter() - start:.1f} s")
