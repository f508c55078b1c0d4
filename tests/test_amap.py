"""conveyor.amap: async iteration on the caller's event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

import conveyor

from .conftest import Sleepers, conveyor_threads


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


def test_results_flow_while_the_async_source_is_quiet() -> None:
    """The source waits until the consumer has seen its first 5 results."""
    async def main() -> list[int]:
        seen_five = asyncio.Event()

        async def source() -> AsyncIterator[int]:
            for i in range(5):
                yield i
            await asyncio.wait_for(seen_five.wait(), 10)
            for i in range(5, 10):
                yield i

        async def inc(x: int) -> int:
            return x + 1

        out = []
        async for r in conveyor.amap(inc, source()):
            out.append(r)
            if len(out) == 5:
                seen_five.set()
        return out

    assert asyncio.run(main()) == list(range(1, 11))


def test_async_source_error_and_bounded_read_ahead() -> None:
    pulled = 0

    async def source() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(10**9):
            pulled = i + 1
            if i == 2000:
                raise ValueError("source broke")
            yield i

    async def ident(x: int) -> int:
        await asyncio.sleep(0)
        return x

    async def main() -> list[int]:
        out = []
        with pytest.raises(ValueError, match="source broke"):
            async for r in conveyor.amap(ident, source(), window=64):
                out.append(r)
                if r == 100:
                    # the pump reads ahead a bounded amount, not the whole source
                    assert pulled <= 100 + 64 + 256 + 2
        return out

    assert asyncio.run(main()) == list(range(2000))


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
    sleepers = Sleepers(5)

    async def consume() -> None:
        async with conveyor.amap(sleepers.fn(), range(5), workers=5,
                                 backend="asyncio") as results:
            async for _ in results:
                pass

    async def main() -> None:
        t = asyncio.create_task(consume())
        assert await asyncio.to_thread(sleepers.all_started.wait, 10)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(asyncio.wait_for(main(), 10))
    assert sorted(sleepers.cancelled) == list(range(5))


def test_amap_on_processes_with_an_async_input() -> None:
    """amap can feed worker processes from an async iterable."""
    async def numbers() -> AsyncIterator[int]:
        for i in range(50):
            await asyncio.sleep(0)
            yield i

    async def main() -> list[int]:
        return [r async for r in conveyor.amap(lambda x: x * x, numbers(),
                                               backend="process", workers=2)]

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [i * i for i in range(50)]
