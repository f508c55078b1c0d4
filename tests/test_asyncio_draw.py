"""The asyncio backend's workers draw the items of one batch one by one: a
batch is no worker's queue. Real event loops, real cancellation."""

from __future__ import annotations

import asyncio
import gc

import conveyor
from conveyor._backends._base import Batch
from conveyor.errors import TaskTimeout


def test_many_workers_run_slow_items_at_once_from_few_batches() -> None:
    running = peak = 0

    async def slow(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return x

    n, workers = 3000, 500
    results = conveyor.map(slow, range(n), workers=workers)
    assert list(results) == list(range(n))
    assert peak == workers                      # every worker busy at once ...
    assert results.stats.batches <= n // 10     # ... on far fewer batches than items


def test_a_slow_item_holds_up_only_itself() -> None:
    """Item 0 waits until the consumer has had every other item of its batch."""
    async def main() -> list[int]:
        others = asyncio.Event()

        async def fn(x: int) -> int:
            if x == 0:
                await asyncio.wait_for(others.wait(), 10)
            return x

        seen = []
        async for r in conveyor.amap(fn, range(8), workers=8, batch=8, ordered=False):
            seen.append(r)
            if len(seen) == 7:
                others.set()
        return seen

    seen = asyncio.run(main())
    assert seen[-1] == 0 and sorted(seen) == list(range(8))


def test_an_item_that_overruns_its_timeout_fails_alone_and_its_worker_goes_on() -> None:
    started: list[int] = []

    async def fn(x: int) -> int:
        started.append(x)
        if x == 2:
            await asyncio.sleep(30)
        return x

    out: list[object] = list(conveyor.map(fn, range(6), workers=2, batch=6, timeout=0.3,
                                         on_error="return"))
    assert out[:2] == [0, 1] and out[3:] == [3, 4, 5]
    assert isinstance(out[2], TaskTimeout)
    assert sorted(started) == list(range(6))     # each item ran once


def test_stopping_early_cancels_the_items_running_from_a_shared_batch() -> None:
    cancelled = 0

    async def main() -> int:
        nonlocal cancelled
        go = asyncio.Event()

        async def fn(x: int) -> int:
            nonlocal cancelled
            if x == 0:
                return x
            try:
                await asyncio.wait_for(go.wait(), 10)
            except asyncio.CancelledError:
                cancelled += 1
                raise
            return x

        async with conveyor.amap(fn, range(8), workers=8, batch=8) as results:
            async for r in results:
                assert r == 0
                break
        return cancelled

    assert asyncio.run(main()) == 7


def test_a_finished_batch_is_freed_without_the_garbage_collector() -> None:
    """No reference cycle keeps a batch (its items and outcomes) alive after it
    ends: left to the collector, batches would pile up in its oldest generation
    and a long map's memory would grow with its length."""
    async def ainc(x: int) -> int:
        return x + 1

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)   # what the collector finds stays in gc.garbage
    try:
        assert sum(conveyor.map(ainc, range(2000), workers=20, batch=10)) == 2001000
        gc.collect()
        stranded = [o for o in gc.garbage if isinstance(o, Batch)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert stranded == []
