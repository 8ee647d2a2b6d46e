"""Faults injected on purpose, for the reliability suite (tests/reliability/).

``KMLX_FAILPOINTS="compute_step=hang@20"`` makes the 20th batch step hang
for good the way a wedged native call does: the main thread blocked in C
with the GIL released, so no Python signal handler ever runs (how the
worker hung in MLX evaluation in issue #17). ``"compute_step=sleep:8@20"``
makes the 20th step take 8 s, once. Several points: comma-separated.

Unset (always, outside the tests), ``hit`` is one dict lookup that finds
nothing. The variable is read on first use, not at import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections import Counter

log = logging.getLogger("kmlx.worker.failpoints")

_points: dict[str, tuple[str, int]] | None = None
_hits: Counter[str] = Counter()


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    points = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, at = action.partition("@")
        points[name] = (action, int(at or 1))
    return points


def hit(name: str) -> None:
    """Pass a fail point; acts only when the environment names it."""
    global _points
    if _points is None:
        _points = _parse(os.environ.get("KMLX_FAILPOINTS", ""))
        if _points:
            log.warning("fail points armed (tests only): %s", _points)
    if name not in _points:
        return
    _hits[name] += 1
    action, at = _points[name]
    if _hits[name] != at:
        return
    log.warning("fail point %s: %s", name, action)
    if action == "hang":
        _hang_in_native_code()
    elif action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))


def _hang_in_native_code() -> None:
    """Block this thread inside C for good, GIL released: a normal mutex
    locked twice by its owner (ctypes drops the GIL around the call)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mutex = ctypes.create_string_buffer(256)  # bigger than any pthread_mutex_t
    libc.pthread_mutex_init(mutex, None)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # Linux: blocks forever
    while True:  # a libc whose default mutex reports the deadlock instead
        libc.sleep(3600)
