"""In-process tests of the request path: the worker's scheduler and engine,
the gateway's worker client, pool, output stream and routes. Nothing here
starts a process. Async tests run on asyncio through anyio's plugin, each
inside a deadline that cancels it cleanly (its ``async with`` blocks unwind:
sockets close, apps shut down) rather than leaving a hung loop behind."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Generator

import anyio
import pytest
import zmq
import zmq.asyncio

TEST_DEADLINE = 30.0  # seconds for one async test; each wait inside has its own, shorter one


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # the gateway is asyncio (pyzmq's asyncio sockets)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    test = pyfuncitem.obj
    if inspect.iscoroutinefunction(test):

        @functools.wraps(test)
        async def within_deadline(*args: object, **kwargs: object) -> None:
            with anyio.fail_after(TEST_DEADLINE):
                await test(*args, **kwargs)

        pyfuncitem.obj = within_deadline
    return (yield)


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
