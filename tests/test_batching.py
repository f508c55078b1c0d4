"""Adaptive batching: tiny tasks are grouped, long ones are not, nothing is held hostage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import conveyor
from conveyor._batching import Batcher

from .conftest import BackendName, Gate, task, waiting_task


def test_batcher_grows_for_tiny_tasks_and_shrinks_for_long_ones() -> None:
    b = Batcher(target=0.002, max_size=4096)
    assert b.size == 1
    sizes = []
    for _ in range(20):
        b.observe(b.size, b.size * 1e-7)      # 0.1 us per item
        sizes.append(b.size)
    assert sizes[:3] == [2, 4, 8]              # doubles at most per step
    assert b.size == 4096                      # capped
    b.observe(b.size, 10.0)                    # a batch that took 10 s
    assert b.size == 1                         # long tasks are not grouped


def test_batcher_fixed_size() -> None:
    b = Batcher(target=0.002, max_size=4096, fixed=7)
    b.observe(7, 1e-9)
    assert b.size == 7


def test_tiny_tasks_are_batched(backend: BackendName) -> None:
    results = conveyor.map(task(backend, lambda x: x), range(200_000), backend=backend)
    assert sum(results) == sum(range(200_000))
    # 200k items in far fewer hand-offs: the per-item cost is not a per-batch cost
    assert results.stats.batches < 200_000 / 64


def test_a_pools_next_map_of_a_function_starts_at_the_size_learned(backend: BackendName
                                                                    ) -> None:
    """The first map of a function ramps up from one item per batch; a later map of
    the same function on the same Pool starts at the learned size; another
    function starts from one item again.

    Counted on 64 items of a generator (no length: no tail rule splitting the
    last batches): a ramp that at most doubles needs at least 7 batches for
    them (1 + 2 + 4 + 8 + 16 + 32 < 64), the learned size one or two. Timing
    only decides how large the learned size is, which is far above 64 for a
    trivial function even on a loaded machine.
    """
    same = task(backend, lambda x: x)
    other = task(backend, lambda x: x + 1)
    n = 60_000
    with conveyor.Pool(backend=backend, workers=2) as pool:
        assert sum(pool.map(same, range(n))) == sum(range(n))   # learns its size
        again = pool.map(same, iter(range(64)))
        assert list(again) == list(range(64))
        fresh = pool.map(other, iter(range(64)))
        assert list(fresh) == list(range(1, 65))
    assert again.stats.batches <= 2, again.stats
    assert fresh.stats.batches >= 7, fresh.stats


def test_batcher_primed_with_a_learned_time_starts_at_its_size() -> None:
    b = Batcher(target=0.002, max_size=4096)
    b.prime(0.0001)                          # 100 us per item: 20 fit in 2 ms
    assert b.size == 20
    fixed = Batcher(target=0.002, max_size=4096, fixed=3)
    fixed.prime(0.0001)
    assert fixed.size == 3                   # a fixed size stays fixed


def test_long_tasks_are_not_batched(backend: BackendName) -> None:
    # Every task takes 5 batch targets (2 ms threads/asyncio, 20 ms processes,
    # 100 ms dask: fewer items there, on the session cluster's 2 workers).
    delay = {"process": 0.1, "dask": 0.5}.get(backend, 0.01)
    n = 8 if backend == "dask" else 40
    gate = Gate()

    def slow(x: int) -> int:
        gate.wait(delay)
        return x

    if backend == "asyncio":
        async def aslow(x: int) -> int:
            await asyncio.sleep(delay)
            return x
        fn: Callable[[int], Any] = aslow
    else:
        fn = slow
    results = conveyor.map(fn, range(n), backend=backend, workers=4)
    assert list(results) == list(range(n))
    # the first batch is one item; after that, long tasks stay one per batch
    assert results.stats.batches >= n - 2


# Not dask: a running dask task cannot be asked for its finished outcomes or its
# unstarted items, so items after a slow one in the same batch wait for it (at
# most a batch target's worth of them: docs/guide/dask.md says so).
@pytest.mark.parametrize("backend", ["thread", "asyncio", "process"])
@pytest.mark.parametrize(("n", "slow"), [
    (200, 40),          # early: batches are still small
    (30_500, 30_000),   # late: the batch size has grown on fast items
])
def test_one_long_task_does_not_hold_short_ones_hostage(backend: BackendName, n: int,
                                                        slow: int) -> None:
    """Item ``slow`` blocks until all the others are delivered (unordered): if
    any of them were stuck in a batch behind it, the gate would not open for 10 s."""
    gate = Gate()
    fn = waiting_task(backend, gate, lambda x: x == slow, limit=10)
    t0 = time.monotonic()
    seen = 0
    with conveyor.map(fn, range(n), backend=backend, workers=4,
                      ordered=False) as results:
        for _ in results:
            seen += 1
            if seen == n - 1:
                gate.set()
    assert seen == n
    assert time.monotonic() - t0 < 5
