"""backend="process": a task's exception comes back as itself with its remote
traceback, and what cannot be pickled (exceptions, results, functions,
arguments, items, unpickling that raises, exits or hangs) fails only its item.
"""

from __future__ import annotations

import decimal
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.errors import (
    NotPicklable,
    RemoteTraceback,
    TaskTimeout,
    WorkerCrashed,
    item_index,
)

from . import _faults
from ._crossproc import Tally, publish
from ._process_helpers import (
    Boom,
    LockedError,
    TwoArgError,
    drain,
    line_of,
    read_published,
)
from .conftest import child_processes

# -- 5. errors ---------------------------------------------------------------------

def test_task_exception_keeps_its_type_and_remote_traceback() -> None:
    """A KeyError and a custom exception come back as themselves, with a RemoteTraceback cause
    that shows the line that raised."""
    def work(x: int) -> int:
        if x == 1:
            raise KeyError("missing-key")
        if x == 2:
            raise Boom(f"boom at {x}")
        return x

    out: list[Any] = drain(conveyor.map(work, range(4), backend="process", workers=2,
                                        on_error="return"))
    assert out[0] == 0 and out[3] == 3
    key_error, boom = out[1], out[2]
    assert type(key_error) is KeyError and key_error.args == ("missing-key",)
    assert type(boom) is Boom and str(boom) == "boom at 2"
    for exc, line in ((key_error, 'raise KeyError("missing-key")'),
                      (boom, 'raise Boom(f"boom at {x}")')):
        assert isinstance(exc, BaseException)
        cause = exc.__cause__
        assert isinstance(cause, RemoteTraceback), cause
        assert f'File "{__file__}", line {line_of(line)}, in work' in str(cause), str(cause)
        assert line in str(cause), str(cause)   # the source line itself, as in any traceback

    with pytest.raises(Boom) as info:
        drain(conveyor.map(work, [0, 2, 3], backend="process", workers=2))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert item_index(info.value) == 1


@pytest.mark.parametrize("kind", ["holds_a_lock", "cannot_be_rebuilt"])
def test_unpicklable_exception_becomes_not_picklable(kind: str) -> None:
    """An exception that cannot travel back becomes NotPicklable with its type name, its
    message and the worker-side traceback."""
    def work(x: int) -> int:
        if x == 1:
            if kind == "holds_a_lock":
                raise LockedError("locked out")
            raise TwoArgError("left", "right")
        return x

    out: list[Any] = drain(conveyor.map(work, range(3), backend="process", workers=2,
                                        on_error="return"))
    assert out[0] == 0 and out[2] == 2
    exc = out[1]
    assert isinstance(exc, NotPicklable), exc
    name, message = ("LockedError", "locked out") if kind == "holds_a_lock" else \
        ("TwoArgError", "left and right")
    assert name in str(exc) and message in str(exc), str(exc)
    assert isinstance(exc.__cause__, RemoteTraceback), exc.__cause__
    assert name in str(exc.__cause__)


@pytest.mark.parametrize("kind", ["lock_and_generator", "cannot_be_rebuilt"])
def test_unpicklable_result_fails_only_its_item(kind: str) -> None:
    """Returning a lock or a generator (or an object that pickles but cannot be rebuilt in
    the parent) gives NotPicklable for that item only."""
    def work(x: int) -> Any:
        if x == 2:
            return threading.Lock() if kind == "lock_and_generator" else TwoArgError("a", "b")
        if x == 5:
            return (i for i in range(3)) if kind == "lock_and_generator" else x
        return x

    bad = (2, 5) if kind == "lock_and_generator" else (2,)
    out = drain(conveyor.map(work, range(8), backend="process", workers=2, batch=4,
                             on_error="return"))
    assert len(out) == 8
    for x, r in enumerate(out):
        if x in bad:
            assert isinstance(r, NotPicklable), (x, r)
            assert item_index(r) == x
        else:
            assert r == x


def test_unpicklable_function_is_refused_before_any_work() -> None:
    """A closure over a lock raises NotPicklable (a TypeError) from map at once, naming it."""
    lock = threading.Lock()
    pulled: list[int] = []

    def items() -> Iterator[int]:
        pulled.append(1)
        yield 1

    def guarded(x: int) -> int:
        with lock:
            return x

    with pytest.raises(NotPicklable) as info:
        conveyor.map(guarded, items(), backend="process", workers=2)
    assert isinstance(info.value, TypeError)
    assert "'lock'" in str(info.value), str(info.value)
    assert pulled == []
    assert child_processes() == []   # no worker was started


def test_submit_with_unpicklable_argument_fails_its_future() -> None:
    """As with ProcessPoolExecutor, an argument that cannot be sent fails the call's
    future (a pickle.PicklingError), not submit itself; the message names the argument."""
    import pickle

    with conveyor.Pool(backend="process", workers=1) as pool:
        fut = pool.submit(lambda a, b: a, 1, threading.Lock())
        with pytest.raises(pickle.PicklingError) as info:
            fut.result(timeout=10)
        assert isinstance(info.value, NotPicklable)
        assert "argument 1" in str(info.value), str(info.value)
        error = pool.submit(lambda a, b=None: a, 1, b=threading.Lock()).exception(timeout=10)
        assert isinstance(error, NotPicklable)
        assert "'b'" in str(error), str(error)
        assert pool.submit(lambda a, b: a + b, 1, 2).result(timeout=10) == 3


@pytest.mark.parametrize(("bad", "batch"), [("lock", 1), ("lock", 8),
                                            ("cannot_be_rebuilt", 1), ("cannot_be_rebuilt", 8)])
def test_unpicklable_item_fails_only_that_item(bad: str, batch: int) -> None:
    """An item in the middle of the input that cannot travel to a worker (a lock, or an object
    that pickles but cannot be rebuilt there) fails only itself, with NotPicklable."""
    odd = threading.Lock() if bad == "lock" else TwoArgError("a", "b")
    items: list[Any] = [0, 1, 2, odd, 4, 5, 6, 7, 8, 9]

    def double(x: Any) -> Any:
        return x * 2 if isinstance(x, int) else "the odd item arrived"

    out: list[Any] = drain(conveyor.map(double, items, backend="process", workers=2,
                                        batch=batch, on_error="return"))
    assert len(out) == 10
    assert isinstance(out[3], NotPicklable), out[3]
    assert item_index(out[3]) == 3
    assert [r for i, r in enumerate(out) if i != 3] == [2 * i for i in range(10) if i != 3]


class SleepAtUnpickle:
    """An item whose unpickling sleeps for ``seconds`` (in ``time.sleep``: nothing of this
    module is needed to unpickle it)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[Any, ...]:
        return (time.sleep, (self.seconds,))


class Tracked:
    """A task's result that says, in the file ``path``, when its worker lets go of it
    (the copy unpickled in the parent has no finalizer: ``__init__`` does not run there)."""

    def __init__(self, x: int, path: str) -> None:
        self.x = x
        weakref.finalize(self, publish, path, "freed")


BAD = 13   # the faulty one of the 40 items below


@pytest.mark.parametrize("max_tasks", [None, 7])
@pytest.mark.parametrize("what", ["raise_at_unpickle", "exit_at_unpickle"])
def test_a_result_the_parent_cannot_unpickle_fails_alone_and_nothing_reruns(
        what: str, max_tasks: int | None) -> None:
    """Results that are not plain data (Decimals) travel in one pickle; when one of them
    cannot be unpickled in the parent (it raises, or raises SystemExit), only its item fails,
    and no task runs twice for it (also on a worker that retires after 7 tasks)."""
    runs = Tally()

    def work(d: decimal.Decimal) -> Any:
        runs.add(int(d))
        return _faults.Fault(what) if d == BAD else d * 2

    items = [decimal.Decimal(i) for i in range(40)]
    out = drain(conveyor.map(work, items, backend="process", workers=2, batch=40,
                             max_tasks_per_worker=max_tasks, on_error="return"), 30)
    assert isinstance(out[BAD], NotPicklable), out[BAD]
    assert item_index(out[BAD]) == BAD
    assert [r for i, r in enumerate(out) if i != BAD] == [2 * d for d in items if d != BAD]
    assert [runs.count(i) for i in range(40)] == [1] * 40


@pytest.mark.parametrize("max_tasks", [None, 7])
@pytest.mark.parametrize("what", ["raise_at_unpickle", "exit_at_unpickle", "os_exit_at_unpickle"])
def test_an_item_a_worker_cannot_unpickle_fails_alone(what: str, max_tasks: int | None) -> None:
    """Items that are not plain data travel in one pickle; when one of them cannot be
    unpickled in the worker, only it fails, the others of its batch come back right. If
    unpickling it raises, no task has run yet: none runs twice. If it kills the worker (each
    time), it fails with WorkerCrashed, and only the items before it run again."""
    runs = Tally()

    def work(d: decimal.Decimal) -> decimal.Decimal:
        runs.add(int(d))
        return d * 2

    items: list[Any] = [decimal.Decimal(i) for i in range(40)]
    items[BAD] = _faults.Fault(what)
    out: list[Any] = drain(conveyor.map(work, items, backend="process", workers=2, batch=40,
                                        max_tasks_per_worker=max_tasks, on_error="return"), 30)
    error = WorkerCrashed if what == "os_exit_at_unpickle" else NotPicklable
    assert isinstance(out[BAD], error), out[BAD]
    assert item_index(out[BAD]) == BAD
    assert [r for i, r in enumerate(out) if i != BAD] == [2 * i for i in range(40) if i != BAD]
    counts = [runs.count(i) for i in range(40)]
    assert counts[BAD] == 0
    if what == "os_exit_at_unpickle":
        assert set(counts[:BAD]) <= {1, 2}, counts   # they ran, then their worker died
        assert counts[BAD + 1:] == [1] * (40 - BAD - 1), counts
    else:
        assert counts[:BAD] + counts[BAD + 1:] == [1] * 39, counts


def test_a_timed_item_whose_unpickling_hangs_times_out_alone() -> None:
    """With timeout=, unpickling an item counts as part of its task: one whose unpickling
    hangs fails with TaskTimeout, and the others of its batch come back right."""
    items: list[Any] = [decimal.Decimal(i) for i in range(8)]
    items[3] = SleepAtUnpickle(30)

    def work(d: Any) -> Any:
        return d * 2

    t0 = time.monotonic()
    out = drain(conveyor.map(work, items, backend="process", workers=2, batch=8, timeout=1,
                             on_error="return"), 20)
    assert isinstance(out[3], TaskTimeout), out[3]
    assert [r for i, r in enumerate(out) if i != 3] == [2 * i for i in range(8) if i != 3]
    assert time.monotonic() - t0 < 15


def test_an_idle_worker_lets_go_of_the_results_it_sent(tmp_path: Path) -> None:
    """A worker does not keep the results of its last batch while it waits for work."""
    paths = [str(tmp_path / f"freed-{i}") for i in range(4)]

    def make(i: int) -> Tracked:
        return Tracked(i, paths[i])

    with conveyor.Pool(backend="process", workers=1) as pool:
        out = drain(pool.map(make, range(4), batch=4))
        assert [r.x for r in out] == [0, 1, 2, 3]
        for path in paths:   # the pool is open: the worker is alive, idle
            assert read_published(Path(path)) == "freed"
