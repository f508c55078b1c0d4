"""How results meet the habits users bring: ``wait()``, iterating twice,
misspelt options, ``for`` over ``amap``, ``str(stats)`` (the unread and blocking
warnings: ``test_results_warnings.py``).

Threads and asyncio only: none of this is specific to a backend (the results
side is the same object whatever runs the tasks).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pytest

import conveyor
from conveyor.errors import (
    ConveyorError,
    ResultsConsumed,
    UnreadResultsWarning,
    item_index,
)

from .conftest import conveyor_threads, wait_no_conveyor_threads

# -- wait() ---------------------------------------------------------------------


def test_wait_runs_every_item_and_returns_the_final_stats() -> None:
    ran: list[int] = []
    stats = conveyor.map(ran.append, range(1000), workers=4, window=16).wait()
    assert sorted(ran) == list(range(1000))   # far more than one window
    assert isinstance(stats, conveyor.Stats)
    assert (stats.done, stats.failed, stats.in_flight, stats.cancelled) == (1000, 0, 0, 0)


def test_wait_raises_the_first_failure_and_cancels_the_rest() -> None:
    def f(x: int) -> int:
        if x == 5:
            raise KeyError(x)
        return x

    results = conveyor.map(f, itertools.count(), workers=2, window=8)
    with pytest.raises(KeyError) as info:
        results.wait()
    assert item_index(info.value) == 5
    assert results.stats.submitted < 100   # an endless input: the rest was cancelled
    assert not wait_no_conveyor_threads()   # (the input's pump ends a moment later)


@pytest.mark.parametrize("policy", ["return", "skip"])
def test_wait_applies_return_and_skip_without_raising(policy: str) -> None:
    def f(x: int) -> int:
        if x % 10 == 0:
            raise ValueError(x)
        return x

    stats = conveyor.map(f, range(100), on_error=policy).wait()  # type: ignore[call-overload]
    assert (stats.done, stats.failed) == (90, 10)
    assert stats.skipped == (10 if policy == "skip" else 0)


def test_wait_after_a_partial_loop_runs_the_rest_and_is_idempotent() -> None:
    ran: list[int] = []

    def f(x: int) -> int:
        ran.append(x)
        return x

    results = conveyor.map(f, range(200), window=8)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    first = results.wait()
    assert sorted(ran) == list(range(200)) and first.done == 200
    assert results.wait() == first   # ended: the same final stats at once


def test_wait_in_async_code() -> None:
    async def af(x: int) -> int:
        await asyncio.sleep(0)
        if x == 7:
            raise LookupError(x)
        return x

    async def main() -> tuple[conveyor.Stats, BaseException]:
        stats = await conveyor.amap(af, range(50), workers=5, on_error="skip").wait()
        with pytest.raises(LookupError) as info:
            await conveyor.amap(af, range(50), workers=5).wait()
        return stats, info.value

    stats, error = asyncio.run(main())
    assert (stats.done, stats.failed, stats.skipped) == (49, 1, 1)
    assert item_index(error) == 7


def test_wait_on_pools_and_pipelines() -> None:
    seen: list[int] = []
    with conveyor.Pool(workers=3) as pool:
        assert pool.map(seen.append, range(100)).wait().done == 100
    assert sorted(seen) == list(range(100))

    seen.clear()
    stats = (conveyor.stream(range(100)).map(abs, name="first")
             .filter(lambda x: x % 2 == 0, name="even").map(seen.append, name="store").wait())
    assert list(stats) == ["map first", "filter even", "map store"]
    assert stats["map store"].done == 50 and sorted(seen) == list(range(0, 100, 2))

    def boom(x: int) -> int:
        raise OSError(x)

    pipeline = conveyor.stream(range(10)).map(boom, name="boom").map(abs).open()
    with pytest.raises(OSError, match="0") as info:
        pipeline.wait()
    assert "'map boom'" in "".join(getattr(info.value, "__notes__", []))
    assert pipeline.wait()["map boom"].failed >= 1   # ended: its stats at once


# -- slips -------------------------------------------------------------------------


def test_chunksize_gets_did_you_mean_batch() -> None:
    async def af(x: int) -> int:
        return x

    async def amap_with_chunksize() -> None:
        conveyor.amap(af, [1], chunksize=4)  # type: ignore[call-overload]

    calls: list[Callable[[], object]] = [
        lambda: conveyor.map(abs, [1], chunksize=4),  # type: ignore[call-overload]
        lambda: asyncio.run(amap_with_chunksize()),
        lambda: conveyor.stream([1]).map(abs, chunksize=4),
    ]
    with conveyor.Pool(workers=1) as pool:
        calls.append(lambda: pool.map(abs, [1], chunksize=4))  # type: ignore[call-overload]
        for call in calls:
            with pytest.raises(TypeError, match=r"unexpected option chunksize=; did you mean "
                                                r"batch=\?"):
                call()
    # The drop-in executors' map has the stdlib's chunksize.
    with conveyor.ThreadPoolExecutor(2) as ex:
        assert list(ex.map(abs, [-1, -2], chunksize=2)) == [1, 2]


def test_unknown_options_on_pool_map_name_pool_map_and_its_options() -> None:
    with conveyor.Pool(workers=1) as pool:
        with pytest.raises(TypeError) as info:
            pool.map(abs, [1], orderd=False)  # type: ignore[call-overload]
        message = str(info.value)
        assert message.startswith("conveyor.Pool.map: unexpected option orderd=; did you "
                                  "mean ordered=?")
        assert "conveyor.Pool.map takes: ordered, window, batch," in message
        assert "backend" not in message and "workers" not in message
        for name in ("workers", "max_workers"):   # the stdlib's name: the same advice
            with pytest.raises(TypeError, match=rf"option {name}=; workers= belongs to the "
                                                r"pool: conveyor\.Pool\(workers=\.\.\.\)"):
                pool.map(abs, [1], **{name: 3})  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"option max_workers=; did you mean workers=\?"):
        conveyor.map(abs, [1], max_workers=3)  # type: ignore[call-overload]


def test_unknown_options_on_map_and_starmap_name_the_call_and_its_options() -> None:
    calls: dict[str, Callable[[], object]] = {
        "map": lambda: conveyor.map(abs, [1], retires=3),  # type: ignore[call-overload]
        "starmap": lambda: conveyor.starmap(abs, [[1]], retires=3),  # type: ignore[call-overload]
    }
    for name, call in calls.items():
        where = rf"conveyor\.{name}"
        with pytest.raises(TypeError, match=rf"^{where}: unexpected option retires=; did you "
                                            rf"mean retries=\? {where} takes: ordered, window, "):
            call()


def test_for_over_amap_says_use_async_for_and_stops_the_run() -> None:
    async def af(x: int) -> int:
        await asyncio.sleep(0)
        return x

    async def main() -> None:
        results = conveyor.amap(af, itertools.count())
        with pytest.raises(TypeError, match=r"use `async for r in conveyor\.amap"):
            for _ in results:  # type: ignore[attr-defined]
                pass
        for _ in range(1000):   # a bounded wait that lets the loop run (the tasks stop)
            if not conveyor_threads():
                break
            await asyncio.sleep(0.01)
        assert not conveyor_threads()   # the run was stopped
        # Still not an Iterable (amap's input and isinstance checks see an async one).
        assert not isinstance(results, Iterable)
        del results   # the TypeError said it all: no unread warning as well

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        asyncio.run(main())
    assert not [w for w in seen if issubclass(w.category, UnreadResultsWarning)]


def test_iterating_again_after_the_end_raises_after_a_break_goes_on() -> None:
    results = conveyor.map(abs, range(10), window=4)
    for r in results:
        if r == 3:
            break
    assert list(results) == [4, 5, 6, 7, 8, 9]   # a loop left early goes on, as a file's
    with pytest.raises(ResultsConsumed, match="already been iterated to their end"):
        list(results)
    with pytest.raises(StopIteration):
        next(results)   # the iterator protocol stays: next() after the end stops
    assert issubclass(ResultsConsumed, RuntimeError) and issubclass(ResultsConsumed,
                                                                    ConveyorError)

    def fail(x: int) -> int:
        raise ValueError(x)

    failed = conveyor.map(fail, range(3))
    with pytest.raises(ValueError, match="0"):
        list(failed)
    with pytest.raises(ResultsConsumed, match="or ended with an error"):
        list(failed)

    closed = conveyor.map(abs, range(3))
    closed.close()
    with pytest.raises(ResultsConsumed, match="were closed"):
        list(closed)


def test_iterating_async_results_and_pipelines_again_raises() -> None:
    async def af(x: int) -> int:
        return x

    async def main() -> None:
        results = conveyor.amap(af, range(3))
        assert [r async for r in results] == [0, 1, 2]
        with pytest.raises(ResultsConsumed, match=r"\[r async for r in results\]"):
            async for _ in results:
                pass
        pipeline = conveyor.stream(range(3)).map(abs).open()
        assert [x async for x in pipeline] == [0, 1, 2]
        with pytest.raises(ResultsConsumed):
            async for _ in pipeline:
                pass

    asyncio.run(main())
    pipeline = conveyor.stream(range(3)).map(abs).open()
    assert list(pipeline) == [0, 1, 2]
    with pytest.raises(ResultsConsumed, match="already been iterated"):
        list(pipeline)
    with conveyor.stream(range(3)).map(abs).open() as closed:
        pass
    with pytest.raises(ResultsConsumed, match="were closed"):
        list(closed)
    stream = conveyor.stream(range(3)).map(abs)
    assert list(stream) == list(stream) == [0, 1, 2]   # a Stream runs anew each time


# -- str(stats) --------------------------------------------------------------------


def _stats(**fields: Any) -> conveyor.Stats:
    base: dict[str, Any] = dict(
        backend="thread", workers=8, submitted=0, done=0, failed=0, skipped=0, timed_out=0,
        retried=0, in_flight=0, cancelled=0, wall_time=1.0, throughput=0.0,
        busy_fraction=0.0, batches=0)
    return conveyor.Stats(**{**base, **fields})


def test_stats_str_is_one_short_rounded_line() -> None:
    s = _stats(submitted=1008, done=1000, failed=3, retried=2, in_flight=5,
               wall_time=4.2049, throughput=238.4417, busy_fraction=0.91234)
    assert str(s) == ("1,000 done, 3 failed, 2 retried in 4.2 s (238/s) on 8 threads, "
                      "91% busy; 5 in flight.")
    assert repr(s).startswith("Stats(backend='thread', workers=8, submitted=1008, ")
    assert "wall_time=4.2049" in repr(s)   # the repr stays exact
    assert str(_stats(backend="asyncio", workers=1, done=7, failed=3, skipped=2,
                      timed_out=1, cancelled=4, wall_time=0.0421, throughput=237.5)) == (
        "7 done, 3 failed (2 skipped, 1 timed out) in 42 ms (238/s) on 1 coroutine, "
        "0% busy; 4 cancelled.")
    assert str(_stats(backend="process", workers=4, wall_time=3725, throughput=23.84)) == (
        "0 done, 0 failed in 1 h 2 min (23.8/s) on 4 processes, 0% busy.")
    assert str(_stats(backend="dask", workers=2, wall_time=61.2, throughput=2.384)) == (
        "0 done, 0 failed in 1 min 1 s (2.38/s) on 2 dask worker threads, 0% busy.")
    assert str(_stats(backend="process", workers=2, done=1200, retried=1, rerun=1500,
                      wall_time=2.0, throughput=600.0)) == (
        "1,200 done, 0 failed, 1 retried, 1,500 re-run in 2.0 s (600/s) on 2 processes, "
        "0% busy.")


def test_stats_str_of_a_real_run() -> None:
    tries: dict[int, int] = {}
    lock = threading.Lock()

    def f(x: int) -> int:
        with lock:
            tries[x] = tries.get(x, 0) + 1
        if x in (1, 2, 3):
            raise ValueError(x)
        return x

    stats = conveyor.map(f, range(1000), workers=4, retries=1, backoff=0.001,
                         on_error="skip").wait()
    text = str(stats)
    assert text.startswith("997 done, 3 failed (3 skipped), 3 retried in "), text
    assert re.fullmatch(r".* in \d+(\.\d)? m?s \([\d,.]+/s\) on 4 threads, \d+% busy\.",
                        text), text
