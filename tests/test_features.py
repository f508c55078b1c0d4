"""rate=, progress=, stats, and sync map inside a running event loop."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import pytest

import conveyor

from .conftest import BackendName, task


def test_rate_spaces_task_starts(backend: BackendName) -> None:
    def start(x: int) -> float:
        return time.monotonic()   # system-wide: worker processes' times compare

    fn = task(backend, start)
    # A warm pool: rate= spaces dispatches, and a process worker that is still
    # starting would delay its first task.
    with conveyor.Pool(backend, workers=8) as pool:
        list(pool.map(fn, range(8), batch=1))
        starts = sorted(pool.map(fn, range(11), rate=50))
    assert len(starts) == 11
    # at most 50 starts per second: 11 starts span at least 10 intervals of 20 ms
    assert starts[-1] - starts[0] >= 10 / 50 * 0.95
    # No bursts. A start is seen late when its worker is slow to begin it (a
    # loaded machine, the dask scheduler's latency), which shortens the gap
    # after it but not the span over two gaps: three starts dispatched 20 ms
    # apart span at least 20 ms however late the first was seen (up to 20 ms).
    spans = [c - a for a, c in zip(starts, starts[2:], strict=False)]
    assert min(spans) >= 0.02 * 0.95, spans


def test_progress_bar_counts_items(backend: BackendName) -> None:
    buf = io.StringIO()
    out = list(conveyor.map(task(backend, lambda x: x), range(5000), backend=backend,
                            progress={"file": buf, "mininterval": 0}, desc="squares"))
    assert len(out) == 5000
    text = buf.getvalue()
    assert "squares" in text
    assert "5000/5000" in text          # items, not batches


def test_stats(backend: BackendName) -> None:
    def f(x: int) -> int:
        if x % 10 == 0:
            raise ValueError(x)
        return x

    results = conveyor.map(task(backend, f), range(100), backend=backend, workers=3,
                           on_error="return")
    assert len(list(results)) == 100
    s = results.stats
    assert isinstance(s, conveyor.Stats)
    assert (s.submitted, s.done, s.failed, s.skipped, s.in_flight) == (100, 90, 10, 0, 0)
    assert s.backend == backend and s.workers == 3
    assert s.wall_time > 0 and s.throughput > 0
    assert 0 <= s.busy_fraction <= 1
    with pytest.raises(AttributeError):
        s.done = 5  # type: ignore[misc]   # frozen


def test_busy_fraction_reflects_work() -> None:
    gate = threading.Event()

    def busy(x: int) -> int:
        gate.wait(0.05)   # each task keeps its worker busy 50 ms
        return x

    results = conveyor.map(busy, range(8), workers=4)
    list(results)
    assert results.stats.busy_fraction > 0.5


def test_sync_map_of_coroutine_inside_running_loop() -> None:
    """A loop is running in this thread, and map still works. Inside a coroutine it
    warns that it blocks the loop (at a notebook cell's top level it does not:
    see test_results_habits)."""
    async def double(x: int) -> int:
        await asyncio.sleep(0.001)
        return 2 * x

    async def cell() -> list[int]:
        with pytest.warns(conveyor.errors.BlockingCallWarning):
            return list(conveyor.map(double, range(50)))   # sync call inside the loop

    assert asyncio.run(cell()) == [2 * x for x in range(50)]


def test_default_backend_for_coroutine_function() -> None:
    async def f(x: int) -> int:
        return x

    results = conveyor.map(f, range(3))
    assert list(results) == [0, 1, 2]
    assert results.stats.backend == "asyncio"
