"""The warnings results give about the habits users bring: results dropped
unread (at the caller's line, with the count; never for a deliberate end),
and a sync loop over a map inside a coroutine, which blocks the event loop
(allowed at a notebook cell's top level).

Threads and asyncio only: none of this is specific to a backend.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import gc
import inspect
import os
import re
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.errors import (
    BlockingCallWarning,
    UnreadResultsWarning,
)

from ._executor_util import wait_until
from .conftest import conveyor_threads


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
