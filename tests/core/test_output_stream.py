"""gateway.output_stream.OutputStream: the per-request queue between the
worker socket and the client relay (its own waiter and timer)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.output_stream import OutputStream
from protocol.messages import RequestOutput

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def out(i: int) -> RequestOutput:
    return RequestOutput("r", content=str(i))


async def test_outputs_come_out_in_order():
    s = OutputStream()
    assert s.empty()
    for i in range(3):
        s.put_nowait(out(i))
    assert not s.empty()
    assert [(await s.get()).content for _ in range(3)] == ["0", "1", "2"]
    assert s.empty()


async def test_get_nowait_on_an_empty_stream_raises():
    s = OutputStream()
    with pytest.raises(IndexError):
        s.get_nowait()
    s.put_nowait(out(1))
    assert s.get_nowait().content == "1"


async def test_a_waiting_get_wakes_on_put():
    s = OutputStream()
    waiter = asyncio.create_task(s.get())
    await asyncio.sleep(0)  # let it wait
    assert not waiter.done()
    s.put_nowait(out(7))
    assert (await asyncio.wait_for(waiter, 10)).content == "7"


async def test_get_with_a_timeout_returns_none_when_nothing_comes():
    s = OutputStream()
    assert await s.get(timeout=0.01) is None
    s.put_nowait(out(1))  # the stream still works afterwards
    assert (await s.get(timeout=10)).content == "1"


async def test_a_put_before_the_timeout_is_returned_not_none():
    s = OutputStream()
    getter = asyncio.create_task(s.get(timeout=30))
    await asyncio.sleep(0)
    s.put_nowait(out(2))
    assert (await asyncio.wait_for(getter, 10)).content == "2"


async def test_a_cancelled_get_leaves_the_stream_usable():
    s = OutputStream()
    getter = asyncio.create_task(s.get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    s.put_nowait(out(3))  # no stale waiter to trip over
    assert (await s.get(timeout=10)).content == "3"


async def test_several_puts_wake_one_get_and_queue_the_rest():
    s = OutputStream()
    getter = asyncio.create_task(s.get())
    await asyncio.sleep(0)
    for i in range(3):
        s.put_nowait(out(i))
    assert (await asyncio.wait_for(getter, 10)).content == "0"
    assert [s.get_nowait().content for _ in range(2)] == ["1", "2"]
