"""conveyor.amap: async iteration on the caller's event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

import conveyor

from .conftest import conveyor_threads


def test_coroutines_run_on_the_callers_loop() -> None:
    loops: set[int] = set()

    async def f(x: int) -> int:
        loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0)
        return x * 2

    async def main() -> tuple[list[int], int]:
        out = [r async for r in conveyor.amap(f, range(100), workers=10)]
        return out, id(asyncio.get_running_loop())

    out, loop_id = asyncio.run(main())
    assert out == [x * 2 for x in range(100)]
    assert loops == {loop_id}


def test_sync_function_runs_on_threads_without_blocking_the_loop() -> None:
    gate = threading.Event()

    def blocking(x: int) -> int:
        gate.wait(5)
        return x

    async def main() -> list[int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                if ticks == 5:
                    gate.set()   # only reached if the loop keeps running
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        out = [r async for r in conveyor.amap(blocking, range(8), workers=4)]
        t.cancel()
        return out

    assert asyncio.run(asyncio.wait_for(main(), 10)) == list(range(8))


def test_async_iterable_input() -> None:
    async def source() -> AsyncIterator[int]:
        for i in range(20):
            await asyncio.sleep(0)
            yield i

    async def inc(x: int) -> int:
        return x + 1

    async def main() -> list[int]:
        return [r async for r in conveyor.amap(inc, source())]

    assert asyncio.run(main()) == list(range(1, 21))


def test_early_break_and_error() -> None:
    async def f(x: int) -> int:
        if x == 50:
            raise KeyError(x)
        await asyncio.sleep(0)
        return x

    async def main() -> None:
        async with conveyor.amap(f, range(10**6), window=32) as results:
            async for r in results:
                if r == 10:
                    break
        with pytest.raises(KeyError):
            async for _ in conveyor.amap(f, range(100)):
                pass

    asyncio.run(main())
    assert not conveyor_threads()


def test_task_cancellation_stops_the_run() -> None:
    cancelled = []

    async def slow(x: int) -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async def consume() -> None:
        async with conveyor.amap(slow, range(5), workers=5) as results:
            async for _ in results:
                pass

    async def main() -> None:
        t = asyncio.create_task(consume())
        await asyncio.sleep(0.2)   # workload: let the tasks start
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(asyncio.wait_for(main(), 10))
    assert sorted(cancelled) == list(range(5))
