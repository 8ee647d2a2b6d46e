"""In-process tests of the request path: the worker's scheduler and engine,
the gateway's worker client, pool, output stream and routes. Nothing here
starts a process. Async tests run on asyncio through anyio's plugin, each
inside a deadline that cancels it cleanly (its ``async with`` blocks unwind:
sockets close, apps shut down) rather than leaving a hung loop behind."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Generator
from typing import Any

import anyio
import pytest
import zmq
import zmq.asyncio

TEST_DEADLINE = 60.0  # seconds for one async test; each wait inside has its own, shorter one


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # the gateway is asyncio (pyzmq's asyncio sockets)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    test = pyfuncitem.obj
    if inspect.iscoroutinefunction(test):

        @functools.wraps(test)
        async def within_deadline(*args: object, **kwargs: object) -> None:
            stacks: list[str] = []
            snapshot = asyncio.get_running_loop().call_later(TEST_DEADLINE, lambda: stacks.append(_task_stacks()))
            try:
                with anyio.fail_after(TEST_DEADLINE):
                    await test(*args, **kwargs)
            except (TimeoutError, asyncio.CancelledError):
                if stacks:  # our deadline, not someone else's cancellation
                    raise TimeoutError(f"the test ran past its {TEST_DEADLINE}s deadline; tasks then:\n{stacks[0]}") from None
                raise
            finally:
                snapshot.cancel()

        pyfuncitem.obj = within_deadline
    return (yield)


def _task_stacks() -> str:
    """Where every task on the loop waits (its chain of awaits, innermost
    last): the first thing to read when a test hangs."""
    lines = []
    for task in asyncio.all_tasks():
        chain: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None and len(chain) < 12:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        lines.append(f"  {task.get_name()}: {' -> '.join(chain) or '(running)'}")
    return "\n".join(sorted(lines))


@pytest.fixture(autouse=True)
def no_socket_left_open() -> Generator[None, None, None]:
    """Every ZeroMQ socket a test opens is closed by its end. A leaked one
    would also make the shared context block the interpreter's exit."""
    yield
    ctx = zmq.asyncio.Context.instance()
    leaked = [s for s in list(ctx._sockets) if not s.closed]
    for s in leaked:
        s.close(linger=0)
    assert not leaked, f"{len(leaked)} ZeroMQ socket(s) left open: {[zmq.SocketType(s.type).name for s in leaked]}"

