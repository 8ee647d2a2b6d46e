"""The watchdog's decisions, in-process on a hand-driven clock: when a loop
counts as stuck, what happens then, and how shutdown is bounded."""

from __future__ import annotations

import signal

import pytest

from worker.watchdog import EXIT_GRACE, RETURN_GRACE, LoopStalled, Progress, Watchdog


@pytest.fixture(autouse=True)
def _close_watchdogs():
    made: list[Watchdog] = []
    Recorder.made = made
    yield
    for dog in made:
        dog.close()


class Recorder:
    made: list[Watchdog] = []

    def __init__(self, stall_timeout: float = 10.0, drain_timeout: float = 30.0):
        self.progress = Progress()
        self.progress.at = 0.0
        self.stops: list[bool] = []
        self.going_away: list[str] = []
        self.closed: list[str] = []
        self.stalls: list[LoopStalled] = []
        self.exits: list[int] = []
        self.dog = Watchdog(
            self.progress,
            stop=self.stops.append,
            say_going_away=self.going_away.append,
            close_transport=self.closed.append,
            on_stall=self.stalls.append,
            stall_timeout=stall_timeout,
            drain_timeout=drain_timeout,
            exit=self.exits.append,
        )
        Recorder.made.append(self.dog)


def test_a_loop_quiet_past_the_timeout_is_reported_once_and_recovers():
    r = Recorder(stall_timeout=10)
    r.progress.doing = "a batch step"
    r.dog.check(9.9)
    assert r.going_away == [] and r.stalls == []
    r.dog.check(10.5)
    r.dog.check(30.0)  # still stuck: told once
    assert len(r.going_away) == 1 and "stuck for 10 s (a batch step)" in r.going_away[0]
    assert len(r.stalls) == 1 and r.stalls[0].doing == "a batch step"
    assert r.dog.stalled_since == 0.0
    r.progress.at = 31.0  # the step finished
    r.dog.check(31.1)
    assert r.dog.stalled_since is None and r.exits == [] and r.stops == []


def test_no_stall_detection_when_disabled():
    r = Recorder(stall_timeout=0)
    r.dog.check(10_000.0)
    assert r.going_away == [] and r.stalls == []


def test_sigterm_drains_then_stops_then_bounds_a_stuck_loop():
    r = Recorder(drain_timeout=30)
    r.dog.on_signal(signal.SIGTERM)
    t0 = r.dog._drain_until - 30  # the signal's time on the monotonic clock
    assert r.stops == [True]
    r.dog.check(t0 + 29)
    assert r.stops == [True]
    r.dog.check(t0 + 30.1)  # drain over: stop now
    assert r.stops == [True, False]
    r.progress.at = t0 + 31  # (a loop that keeps turning is not stalled)
    r.dog.check(t0 + 30.1 + RETURN_GRACE - 0.5)
    assert r.exits == []
    r.dog.check(t0 + 30.1 + RETURN_GRACE + 0.5)  # never returned: out
    assert r.exits == [1] and "did not stop" in r.closed[0]


def test_a_second_signal_stops_at_once():
    r = Recorder()
    r.dog.on_signal(signal.SIGTERM)
    r.dog.on_signal(signal.SIGTERM)
    assert r.stops == [True, False]
    assert r.dog._stop_at is not None


def test_sigint_and_sigterm_on_a_stalled_loop_skip_the_drain():
    r = Recorder(stall_timeout=5)
    r.dog.on_signal(signal.SIGINT)
    assert r.stops == [False]
    r = Recorder(stall_timeout=5)
    r.dog.check(6.0)
    r.dog.on_signal(signal.SIGTERM)
    assert r.stops == [False]


def test_the_shutdown_after_the_loop_returns_is_bounded_too():
    r = Recorder()
    r.dog.on_signal(signal.SIGTERM)
    r.dog.on_signal(signal.SIGTERM)
    stop_at = r.dog._stop_at
    r.dog.loop_returned()  # saving conversation caches now
    r.dog.check(stop_at + EXIT_GRACE - 1)
    assert r.exits == []
    r.dog.check(stop_at + EXIT_GRACE + 1)
    assert r.exits == [1] and "shutdown did not finish" in r.closed[0]


@pytest.mark.parametrize("spec, parsed", [
    ("compute_step=hang@20", {"compute_step": ("hang", 20)}),
    ("compute_step=sleep:8@3, other=hang", {"compute_step": ("sleep:8", 3), "other": ("hang", 1)}),
    ("", {}),
])
def test_fail_point_specs(spec, parsed):
    from worker.failpoints import _parse

    assert _parse(spec) == parsed
