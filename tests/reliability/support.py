"""Helpers for the reliability suite: requests, a stream running in the
background, and process facts (descriptors) read from /proc."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Stack

_client: httpx.Client | None = None


def client() -> httpx.Client:
    """One keep-alive client for the suite: a new httpx client per request
    costs ~90 ms here (its TLS context), more than the request itself."""
    global _client
    if _client is None:
        _client = httpx.Client(timeout=120)
    return _client


def chat(stack: Stack, content: str | list[dict], conversation: str | None = None, **extra) -> httpx.Response:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    headers = {"X-Conversation-Id": conversation} if conversation else {}
    body = {"messages": messages, "max_tokens": 8, **extra}
    return client().post(f"{stack.base_url}/chat/completions", json=body, headers=headers)


def conv_kv(stack: Stack, action: str, conversation: str, **extra) -> httpx.Response:
    return client().post(f"{stack.base_url}/conv_kv/{action}", json={"conversation": conversation, **extra})


@dataclass
class BackgroundStream:
    """A long streamed completion consumed on a thread; records each event
    and when it arrived, so a test can tell whether the stream kept flowing."""

    stack: Stack
    max_tokens: int = 300
    events: list[dict] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    status: int | None = None
    error: BaseException | None = None
    done_line: bool = False

    def __post_init__(self) -> None:
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, min_events: int = 3, timeout: float = 120) -> BackgroundStream:
        self._thread.start()
        if not self._started.wait(timeout):
            raise AssertionError(f"the background stream never started (status {self.status}, error {self.error!r})")
        deadline = time.monotonic() + timeout
        while len(self.events) < min_events and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        return self

    def join(self, timeout: float = 300) -> BackgroundStream:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the background stream did not finish in time"
        return self

    @property
    def completion_tokens(self) -> int:
        usage = next((e["usage"] for e in reversed(self.events) if e.get("usage")), None)
        return usage["completion_tokens"] if usage else -1

    @property
    def errors(self) -> list[dict]:
        return [e for e in self.events if "error" in e]

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time without an event between two moments."""
        times = [start] + [t for t in self.arrivals if start <= t <= end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))

    def _run(self) -> None:
        body = {
            "messages": [{"role": "user", "content": "Keep talking"}],
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            with httpx.stream("POST", f"{self.stack.base_url}/chat/completions", json=body, timeout=300) as r:
                self.status = r.status_code
                self._started.set()
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        self.done_line = True
                    elif line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                        self.arrivals.append(time.monotonic())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self._started.set()


def open_descriptors(pid: int) -> int:
    path = Path(f"/proc/{pid}/fd")
    if not path.is_dir():
        pytest.skip("counting another process's descriptors needs /proc (Linux)")
    return len(os.listdir(path))


def worker_counters(stack: Stack) -> dict:
    return stack.worker_stats()[0]
