"""N tasks with N workers really run at the same time (a barrier only they can pass)."""

from __future__ import annotations

import asyncio
import threading

import pytest

import conveyor


@pytest.mark.parametrize("n", [2, 3, 8, 50])
def test_threads_all_run_at_once(n: int) -> None:
    barrier = threading.Barrier(n, timeout=10)

    def meet(x: int) -> int:
        barrier.wait()   # BrokenBarrierError unless all n tasks are running together
        return x

    assert list(conveyor.map(meet, range(n), workers=n)) == list(range(n))


@pytest.mark.parametrize("n", [3, 200])
def test_coroutines_all_run_at_once(n: int) -> None:
    arrived = 0
    everyone: asyncio.Event | None = None

    async def meet(x: int) -> int:
        nonlocal arrived, everyone
        if everyone is None:
            everyone = asyncio.Event()
        arrived += 1
        if arrived == n:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 10)
        return x

    assert list(conveyor.map(meet, range(n), workers=n)) == list(range(n))


def test_pool_threads_all_run_at_once_after_reuse() -> None:
    with conveyor.Pool(workers=4) as pool:
        for _ in range(3):
            barrier = threading.Barrier(4, timeout=10)
            def meet(x: int, b: threading.Barrier = barrier) -> int:
                b.wait()
                return x

            assert sorted(pool.map(meet, range(4), ordered=False)) == [0, 1, 2, 3]
