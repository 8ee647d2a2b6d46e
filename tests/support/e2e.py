"""Which tests start processes, decided once so nobody has to remember.

A test that starts a process (a worker, a gateway, the `kmlx` client, a
child Python) carries the ``e2e`` marker; `make test-fast` runs every other
test. Fixtures that start processes are decorated with ``starts_processes``
and their users are marked at collection. A test that starts a process
without the marker fails (``ProcessGuard``), in every run, so a forgotten
marker cannot slip into the fast suite.

A module whose every test starts processes may say so with the line
``pytestmark = pytest.mark.e2e``: a run that deselects e2e tests then does
not import it at all (``skip_e2e_module``). Worth it where building the
tests is itself expensive (schemathesis derives its cases from the
87,000-line OpenAI spec at collection, ~20 s here).
"""

from __future__ import annotations

import _posixsubprocess
import os
import pty
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

F = TypeVar("F", bound=Callable[..., Any])

E2E = "e2e"
_FLAG = "_kmlx_starts_processes"


def starts_processes(fixture_func: F) -> F:
    """Mark a fixture function (below ``@pytest.fixture``) as one that starts
    processes: every test that uses it, directly or not, is marked ``e2e``."""
    setattr(fixture_func, _FLAG, True)
    return fixture_func


MODULE_MARK = "pytestmark = pytest.mark.e2e"


def skip_e2e_module(path: Path, markexpr: str) -> bool:
    """Leave out a whole-e2e module (see above) when the run deselects e2e."""
    if " ".join(markexpr.split()) != f"not {E2E}" or path.suffix != ".py" or not path.name.startswith("test_"):
        return False
    return any(line.strip() == MODULE_MARK for line in path.read_text().splitlines())


def uses_process_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in info.name2fixturedefs.get(name, ()):
            if getattr(fixturedef.func, _FLAG, False):
                return True
    return False


class ProcessGuard:
    """While active, starting a process raises: the running test is not
    marked ``e2e`` but tried to start one."""

    _targets = [
        (subprocess.Popen, "_execute_child"),
        (_posixsubprocess, "fork_exec"),  # what multiprocessing's spawn and forkserver call directly
        (os, "system"),
        (os, "fork"),
        (os, "forkpty"),
        (os, "posix_spawn"),
        (os, "posix_spawnp"),
        (pty, "fork"),
    ]

    def __init__(self, nodeid: str):
        self.nodeid = nodeid
        self._saved: list[tuple[Any, str, Any]] = []

    def _refuse(self, *_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(
            f"{self.nodeid} starts a process but is not marked e2e: use a fixture decorated with "
            "tests.support.e2e.starts_processes, or mark the test @pytest.mark.e2e"
        )

    def __enter__(self) -> ProcessGuard:
        for owner, name in self._targets:
            if hasattr(owner, name):
                self._saved.append((owner, name, getattr(owner, name)))
                setattr(owner, name, self._refuse)
        return self

    def __exit__(self, *_exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()
