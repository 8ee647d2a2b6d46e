"""Liveness that means something: the compute loop reports progress, and a
thread beside it acts when the loop stops moving or will not stop.

- **Stalls.** The loop marks ``Progress`` every turn (an idle loop turns at
  least every 0.5 s). When it has not moved for ``stall_timeout`` the
  watchdog logs every thread's stack, tells every gateway ``GoingAway``
  (each fails this worker's requests at once and stops routing to it, so
  its ``/health`` shows the worker down), and queues ``LoopStalled``: if
  the loop ever comes back, it fails what it was running (those clients
  have had their error) and answers pings again, which readmits it.
- **Signals.** Python runs signal handlers on the main thread only, between
  bytecodes: a main thread stuck in native code (MLX) never runs them, so
  SIGTERM used to do nothing. The C-level handler still writes the signal
  number to ``signal.set_wakeup_fd``, and the watchdog reads it there. First
  SIGTERM: drain (up to ``drain_timeout``), then stop. A second signal,
  SIGINT, or SIGTERM while the loop is stalled: stop now.
- **Hard exit.** Once told to stop, the loop gets ``RETURN_GRACE`` seconds
  to return and the shutdown (saving conversation caches) ``EXIT_GRACE``
  in all; past either, the watchdog logs every thread's stack, tells the
  gateways ``GoingAway`` and ends the process with status 1. Exiting is
  the only thing left to do with a thread stuck in native code, and the
  service manager then restarts the worker.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kmlx.worker.watchdog")

RETURN_GRACE = 5.0  # seconds for a stopped compute loop to return
EXIT_GRACE = 20.0  # seconds from the stop to the process's end (saving caches included)
_TICK = 0.25


class Progress:
    """The compute loop's signs of life: when it last moved, doing what.
    Written by the compute loop, read by the watchdog (plain attribute
    stores: atomic under the GIL)."""

    __slots__ = ("at", "doing")

    def __init__(self) -> None:
        self.at = time.monotonic()
        self.doing = "starting"

    def mark(self, doing: str) -> None:
        self.at = time.monotonic()
        self.doing = doing


@dataclass(frozen=True)
class LoopStalled:
    """Put on the inbox when a stall is declared: the loop, should it come
    back, fails every request it holds."""

    seconds: float
    doing: str


class Watchdog:
    def __init__(
        self,
        progress: Progress,
        *,
        stop: Callable[[bool], None],
        say_going_away: Callable[[str], None],
        close_transport: Callable[[str], None],
        on_stall: Callable[[LoopStalled], None],
        stall_timeout: float,
        drain_timeout: float,
        exit: Callable[[int], Any] = os._exit,
    ):
        self.progress = progress
        self._stop = stop  # stop(drain)
        self._going_away = say_going_away  # broadcast GoingAway, keep serving the socket
        self._close_transport = close_transport  # GoingAway, flushed, socket closed
        self._on_stall = on_stall
        self.stall_timeout = stall_timeout
        self.drain_timeout = drain_timeout
        self._exit = exit
        self.stalled_since: float | None = None
        self._signals = 0
        self._drain_until: float | None = None
        self._stop_at: float | None = None
        self._returned = False
        self._signals_installed = False
        self._closed = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._thread = threading.Thread(target=self._run, name="kmlx-watchdog", daemon=True)

    # ------------------------------------------------------------------ #
    def install_signals(self) -> None:
        """Route SIGTERM/SIGINT to the watchdog (call on the main thread)."""
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._signals_installed = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _no_op)  # the work happens on the watchdog thread

    def start(self) -> None:
        self._thread.start()

    def loop_returned(self) -> None:
        """The compute loop is out: the rest of the shutdown is on the clock."""
        self._returned = True
        if self._stop_at is None:
            self._stop_at = time.monotonic()

    def close(self) -> None:
        """Stop watching (the main thread, at the very end of a clean shutdown)."""
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self._signals_installed:
            signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ------------------------------------------------------------------ #
    def _run(self) -> None:
        while not self._closed.is_set():
            ready, _, _ = select.select([self._wake_r], [], [], _TICK)
            if ready:
                for signum in self._read_signals():
                    self.on_signal(signum)
            self.check(time.monotonic())

    def _read_signals(self) -> list[int]:
        try:
            return list(os.read(self._wake_r, 64))
        except BlockingIOError:
            return []

    def on_signal(self, signum: int) -> None:
        self._signals += 1
        now = time.monotonic()
        if self._signals > 1 or signum == signal.SIGINT or self.stalled_since is not None:
            log.info("stopping now (%s)", "compute loop stalled" if self.stalled_since is not None else "second signal")
            self._request_stop(now)
            return
        log.info("draining (up to %.0fs)", self.drain_timeout)
        self._stop(True)
        self._drain_until = now + self.drain_timeout

    def _request_stop(self, now: float) -> None:
        self._stop(False)
        if self._stop_at is None:
            self._stop_at = now

    def check(self, now: float) -> None:
        """One look at the loop and the clocks (the watchdog thread, every tick)."""
        if self._drain_until is not None and now >= self._drain_until and self._stop_at is None:
            log.info("drain timeout: stopping")
            self._request_stop(now)
        if self._stop_at is not None:
            if not self._returned and now - self._stop_at > RETURN_GRACE:
                self._hard_exit(f"the compute loop did not stop within {RETURN_GRACE:.0f} s ({self.progress.doing})")
            elif now - self._stop_at > EXIT_GRACE:
                self._hard_exit(f"shutdown did not finish within {EXIT_GRACE:.0f} s")
        if self._returned or not self.stall_timeout:
            return
        quiet = now - self.progress.at
        if self.stalled_since is None and quiet > self.stall_timeout:
            self.stalled_since = self.progress.at
            doing = self.progress.doing
            log.error("compute loop stuck for %.1f s (%s): telling gateways; its requests fail now", quiet, doing)
            _dump_stacks()
            self._going_away(f"compute loop stuck for {quiet:.0f} s ({doing})")
            self._on_stall(LoopStalled(quiet, doing))
        elif self.stalled_since is not None and self.progress.at > self.stalled_since:
            log.warning("compute loop moving again after %.1f s; gateways readmit it once it answers a ping",
                        self.progress.at - self.stalled_since)
            self.stalled_since = None

    def _hard_exit(self, why: str) -> None:
        log.error("exiting without a clean shutdown: %s", why)
        _dump_stacks()
        try:
            self._close_transport(f"exiting: {why}")
        except Exception:  # nothing more to lose
            log.exception("could not tell gateways")
        for h in logging.getLogger().handlers:
            h.flush()
        self._exit(1)


def _no_op(_signum: int, _frame: Any) -> None:
    """Python-level handler: the watchdog acts on the wakeup fd instead."""


def _dump_stacks() -> None:
    """Every thread's Python stack to stderr (the worker's log): where it hangs."""
    try:
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    except Exception:  # stderr closed or not a real file
        pass
