"""How results meet the habits users bring: ``wait()``, the unread and blocking
warnings, iterating twice, misspelt options, ``for`` over ``amap``, ``str(stats)``.

Threads and asyncio only: none of this is specific to a backend (the results
side is the same object whatever runs the tasks).
"""

from __future__ import annotations

import ast
import asyncio
import functools
import gc
import inspect
import itertools
import os
import re
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.errors import (
    BlockingCallWarning,
    ConveyorError,
    ResultsConsumed,
    UnreadResultsWarning,
    item_index,
)

from ._executor_util import wait_until
from .conftest import conveyor_threads, wait_no_conveyor_threads


def _ran(source: conveyor.Results[Any] | conveyor.Pipeline[Any], n: int) -> bool:
    """Whether the map (a pipeline's first stage) has run ``n`` items (not holding it)."""
    stats = source.stats
    first = stats if isinstance(stats, conveyor.Stats) else next(iter(stats.values()))
    return first.done == n


def _line_of(marker: str) -> int:
    """The line of this file that holds ``marker`` (where a warning must point)."""
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if marker in text and "_line_of" not in text)


@pytest.fixture
def no_unread_warning() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
        gc.collect()
    unread = [w for w in seen if issubclass(w.category, UnreadResultsWarning)]
    assert not unread, [str(w.message) for w in unread]


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


# -- unread results ---------------------------------------------------------------


def test_results_dropped_unread_warn_at_the_callers_line_with_the_count() -> None:
    results = conveyor.map(abs, range(1000), window=8)   # unread-here
    assert wait_until(functools.partial(_ran, results, 8))   # one window ran, then it waits
    with pytest.warns(UnreadResultsWarning) as seen:
        del results
    [w] = seen.list
    assert (w.filename, w.lineno) == (__file__, _line_of("# unread-here"))
    message = str(w.message)
    assert "ran 8 of 1,000 items" in message
    assert "results.wait()" in message and "for r in results" in message


def test_a_map_written_as_a_statement_warns_without_a_length_too() -> None:
    with pytest.warns(UnreadResultsWarning, match=r"ran \d+ items\.") as seen:
        conveyor.map(abs, (x for x in range(1000)))   # statement-here
    assert seen.list[0].lineno == _line_of("# statement-here")


def test_unread_results_that_ran_everything_still_warn() -> None:
    """Their values and errors were lost all the same; the warning does not depend
    on whether the run won the race against the drop."""
    results = conveyor.map(abs, range(3))
    assert wait_until(lambda: not conveyor_threads())   # the run has ended on its own
    with pytest.warns(UnreadResultsWarning, match="ran 3 of 3 items.*nobody saw"):
        del results


def test_the_repr_of_unread_results_says_so() -> None:
    """A notebook shows it for a map left as a cell's last expression (and its output
    cache keeps the results alive, so the warning would come only at the kernel's exit)."""
    with conveyor.map(abs, range(3)) as results:
        assert repr(results).endswith(" (unread: iterate it, or call .wait())>")
        assert list(results) == [0, 1, 2]
        assert re.fullmatch(r"<conveyor\.Results backend='thread' done=3 failed=0 "
                            r"in_flight=0>", repr(results))


@pytest.mark.usefixtures("no_unread_warning")
def test_deliberate_ends_never_warn() -> None:
    for _ in conveyor.map(abs, range(1000), window=8):
        break
    results = conveyor.map(abs, range(1000), window=8)
    next(results)
    del results
    conveyor.map(abs, range(1000)).close()
    with conveyor.map(abs, range(1000)):
        pass
    assert list(conveyor.map(abs, range(100))) == list(range(100))
    conveyor.map(abs, range(1000)).wait()
    with conveyor.Pool(workers=2) as pool:
        for _ in pool.map(abs, range(1000)):
            break
    # The drop-in executors keep the stdlib's map: eager, and silent when unread.
    ran: list[int] = []
    with conveyor.ThreadPoolExecutor(2) as ex:
        ex.map(ran.append, range(100))
        ex.map(abs, range(100), buffersize=4)
    assert sorted(ran) == list(range(100))


def test_unread_amap_warns_and_async_ends_do_not() -> None:
    async def af(x: int) -> int:
        await asyncio.sleep(0)
        return x

    async def main() -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            conveyor.amap(af, range(1000))   # amap-statement
            async with conveyor.amap(af, range(1000)):
                pass
            async for _ in conveyor.amap(af, range(1000)):
                break
            await conveyor.amap(af, range(1000)).aclose()
            gc.collect()
        return seen

    seen = [w for w in asyncio.run(main()) if issubclass(w.category, UnreadResultsWarning)]
    assert [w.lineno for w in seen] == [_line_of("# amap-statement")]
    assert "conveyor.amap: an AsyncResults was dropped without being read" in str(
        seen[0].message)
    assert "await results.wait()" in str(seen[0].message)


def test_pipelines_and_streams_dropped_unread_warn() -> None:
    with pytest.warns(UnreadResultsWarning, match=r"a stream \(map abs\) was dropped "
                                                  "without ever being run") as seen:
        conveyor.stream(range(10)).map(abs)   # stream-statement
    assert seen.list[0].lineno == _line_of("# stream-statement")

    pipeline = conveyor.stream(range(1000)).map(abs, window=8).open()
    assert wait_until(functools.partial(_ran, pipeline, 8))
    with pytest.warns(UnreadResultsWarning, match=r"a pipeline \(its first stage 'map abs'\)"
                                                  r".*ran 8 of 1,000 items"):
        del pipeline


@pytest.mark.usefixtures("no_unread_warning")
def test_pipelines_used_deliberately_do_not_warn() -> None:
    base = conveyor.stream(range(100)).map(abs)
    longer = base.filter(bool)   # `base` was extended: only `longer` is the one to run
    assert longer.to_list() == list(range(1, 100))
    for _ in conveyor.stream(range(1000)).map(abs):
        break
    with conveyor.stream(range(1000)).map(abs).open():
        pass
    conveyor.stream(range(1000)).map(abs).open().close()
    assert conveyor.stream(range(10)).map(abs).wait()["map abs"].done == 10


def test_the_warning_is_visible_by_default_and_given_at_exit(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""\
        import time, conveyor
        conveyor.map(time.sleep, [0.01] * 1000)
        kept = conveyor.map(time.sleep, [0.01] * 1000)
        with conveyor.map(abs, range(1000)):
            pass
        for x in conveyor.map(abs, range(1000)):
            break
        conveyor.map(abs, range(1000)).wait()
        print("end of script", flush=True)
        """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}   # the defaults
    out = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env, timeout=30).stdout
    warned = re.findall(r"script\.py:(\d+): UnreadResultsWarning", out)
    assert warned == ["2", "3"], out
    assert out.index("end of script") < out.index("script.py:3:"), out   # line 3: at exit


# -- a sync loop inside a coroutine -----------------------------------------------


def test_consuming_a_sync_map_inside_a_coroutine_warns_at_that_line() -> None:
    def helper() -> list[int]:
        return list(conveyor.map(abs, [-1, -2]))   # helper-line

    async def main() -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for _ in conveyor.map(abs, [-1]):   # for-line
                pass
            assert helper() == [1, 2]   # a sync function a coroutine called: blocks too
            conveyor.map(abs, [1]).wait()   # wait-line
            with conveyor.Pool(workers=1) as pool:
                list(pool.map(abs, [1]))   # pool-line
            list(conveyor.stream([1]).map(abs))   # stream-line
            # Not blocking: async iteration, and a sync loop in another thread.
            assert [x async for x in conveyor.stream([-3]).map(abs)] == [3]
            await asyncio.to_thread(conveyor.map(abs, [1]).wait)
        return seen

    seen = [w for w in asyncio.run(main()) if issubclass(w.category, BlockingCallWarning)]
    assert [w.lineno for w in seen] == [_line_of(f"# {name}-line") for name in
                                        ("for", "helper", "wait", "pool", "stream")]
    assert all(w.filename == __file__ for w in seen)
    assert issubclass(BlockingCallWarning, RuntimeWarning)
    assert "async for r in conveyor.amap" in str(seen[0].message)


def _run_cell(source: str, namespace: dict[str, Any]) -> None:
    """Run ``source`` as a Jupyter kernel runs a cell.

    ipykernel runs a cell from a coroutine on the kernel's event loop, which
    runs in this thread (and has a current task): its ``do_execute`` calls
    IPython's ``run_cell``, which compiles the cell as top-level code (with
    ``PyCF_ALLOW_TOP_LEVEL_AWAIT``: a cell with an ``await`` becomes a
    coroutine code object, awaited on that loop) and executes it. IPython is
    not installed in the test environments, so this does the same steps
    itself; the result was also checked by hand with a real kernel
    (ipykernel 7.4 via nbclient): the same frames, loop and task.
    """
    code = compile(source, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    async def kernel() -> None:
        assert asyncio.current_task() is not None   # as in the kernel: no way to tell by it
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            await result

    asyncio.run(kernel())


def test_at_a_notebook_cells_top_level_a_sync_map_is_allowed() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    ns: dict[str, Any] = {"conveyor": conveyor, "asyncio": asyncio, "double": double}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _run_cell("values = list(conveyor.map(double, range(5)))", ns)
        assert ns["values"] == [0, 2, 4, 6, 8]
        _run_cell("await asyncio.sleep(0)\ntotal = conveyor.map(abs, [1, 2]).wait().done", ns)
        assert ns["total"] == 2
        assert not [w for w in seen if issubclass(w.category, BlockingCallWarning)]
        # ... but a coroutine defined in a cell blocks the loop like any other.
        _run_cell("async def f():\n    return list(conveyor.map(abs, [-1]))\n"
                  "inner = await f()", ns)
    blocking = [w for w in seen if issubclass(w.category, BlockingCallWarning)]
    assert ns["inner"] == [1]
    assert [(w.filename, w.lineno) for w in blocking] == [("<cell>", 2)]


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
