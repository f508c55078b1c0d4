"""The stdlib's ``Executor.map`` on conveyor's ThreadPoolExecutor and ProcessPoolExecutor.

``concurrent.futures`` documentation, ``Executor.map``: "Similar to
map(fn, *iterables) except: the iterables are collected immediately rather
than lazily, unless a buffersize is specified to limit the number of
submitted tasks whose results have not yet been yielded. [...] The returned
iterator raises a TimeoutError if __next__() is called and the result isn't
available after timeout seconds from the original call to Executor.map().
[...] If a fn call raises an exception, then that exception will be raised
when its value is retrieved from the iterator." Cases from CPython's
``executor.py`` and ``test_thread_pool.py`` besides.

``conveyor.Pool.map`` is conveyor's streaming map (lazy, per-task timeout),
not this one: only the cases that hold for any map run on it too.
"""

from __future__ import annotations

import functools
import gc
import itertools
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import Executor, TimeoutError

import pytest

from ._crossproc import Gate, Tally
from ._executor_util import (
    ALL_KINDS,
    KINDS,
    make,
    make_stdlib,
    make_thing,
    mul,
    record,
    record_divmod,
    record_then_wait,
    sleep_then,
    started,
    wait_until,
)


def shutdown_within(ex: Executor, limit: float) -> bool:
    """Call ``ex.shutdown(wait=True)``; whether it returned within ``limit`` seconds."""
    t = threading.Thread(target=ex.shutdown, name="test-shutdown", daemon=True)
    t.start()
    t.join(limit)
    return not t.is_alive()


class Pulls:
    """An input that counts how far it was read, and flags reading too far ahead.

    ``allowed`` is how many items may have been read so far: ``buffersize``,
    plus the results the test received, plus one while it consumes (the stdlib
    reads the next item as it hands out a result).
    """

    def __init__(self, n: int, buffersize: int | None = None) -> None:
        self.n = n
        self.buffersize = buffersize
        self.pulled = 0
        self.received = 0
        self.consuming = False
        self.overread = threading.Event()
        self._lock = threading.Lock()

    def allowed(self) -> int:
        assert self.buffersize is not None
        return self.buffersize + self.received + (1 if self.consuming else 0)

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            with self._lock:
                self.pulled += 1
                if self.buffersize is not None and self.pulled > self.allowed():
                    self.overread.set()
            yield i


# -- results -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_map_one_and_several_iterables_in_order(kind: str) -> None:
    """executor.py test_map: as the builtin ``map``, several iterables zipped, up to the
    shortest (an endless one included)."""
    with make(kind, 2) as ex:
        assert list(ex.map(abs, range(-10, 10))) == list(map(abs, range(-10, 10)))
        assert list(ex.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
        assert list(ex.map(mul, range(10), range(3))) == [0, 1, 4]
        assert list(ex.map(mul, itertools.count(), range(4))) == [0, 1, 4, 9]
        assert list(ex.map(abs, [])) == []
        assert list(ex.map(lambda x: x + 1, iter(range(5)))) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("chunksize", [1, 3, 6, 40, 50])
@pytest.mark.parametrize("kind", KINDS)
def test_map_chunksize_does_not_change_the_results(kind: str, chunksize: int) -> None:
    """test_process_pool.py test_map_chunksize."""
    ex = make_stdlib(kind, 2)
    with ex:
        got = list(ex.map(pow, range(40), range(40), chunksize=chunksize))
    assert got == list(map(pow, range(40), range(40)))


def test_process_pool_map_rejects_a_chunksize_below_one() -> None:
    """ProcessPoolExecutor.map: ValueError for ``chunksize < 1`` (at the call of map)."""
    ex = make_stdlib("ProcessPoolExecutor", 1)
    with ex, pytest.raises(ValueError, match="chunksize"):
        ex.map(pow, range(40), range(40), chunksize=-1)


@pytest.mark.parametrize("chunksize", [0, -1])
def test_thread_pool_map_ignores_chunksize(chunksize: int) -> None:
    """Executor.map: "With ThreadPoolExecutor, chunksize has no effect." The stdlib's
    ThreadPoolExecutor accepts any value (``map(abs, xs, chunksize=0)`` works)."""
    ex = make_stdlib("ThreadPoolExecutor", 2)
    with ex:
        assert list(ex.map(abs, [-1, 2, -3], chunksize=chunksize)) == [1, 2, 3]


@pytest.mark.parametrize("kind", KINDS)
def test_map_results_are_not_kept_by_the_iterator(kind: str) -> None:
    """executor.py test_free_reference: once consumed, a result is the caller's alone."""
    ex = make_stdlib(kind, 2)
    with ex:
        for obj in ex.map(make_thing, range(10)):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None


# -- eagerness ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_map_reads_its_input_at_once_and_runs_every_item_unconsumed(kind: str) -> None:
    """test_thread_pool.py test_map_submits_without_iteration: the input is read by
    the time map returns; every item runs although the iterator is never consumed,
    and shutdown(wait=True) waits for them."""
    tally = Tally()
    src = Pulls(10)
    ex = make_stdlib(kind, 2)
    it = ex.map(functools.partial(record, tally, "item"), src)
    assert src.pulled == 10
    stopped = shutdown_within(ex, 20)
    if not stopped:
        list(it)   # let a shutdown that waits for the consumer end, and the test go on
    assert stopped, "shutdown(wait=True) did not return while the map was not consumed"
    assert tally.count("item") == 10
    del it


@pytest.mark.parametrize("kind", KINDS)
def test_map_runs_every_item_when_its_iterator_is_dropped(kind: str) -> None:
    """``ex.map(save, xs)`` for the side effects, its value never kept: all items run."""
    tally = Tally()
    ex = make_stdlib(kind, 2)
    with ex:
        ex.map(functools.partial(record, tally, "item"), range(10))
        gc.collect()
    assert tally.count("item") == 10


# -- buffersize (Python 3.14) --------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_map_with_buffersize_reads_its_input_lazily(kind: str) -> None:
    """With ``buffersize``, at most that many items are read ahead of the results the
    caller took: a long input is not read at once."""
    gate, tally = Gate(), Tally()
    src = Pulls(1000, buffersize=2)
    ex = make_stdlib(kind, 4)
    with ex:
        it = ex.map(functools.partial(record_then_wait, tally, "call", gate), src,
                    buffersize=2)
        try:
            assert started(tally, "call", 2)       # the work starts without consuming
            assert not src.overread.wait(0.3), f"read {src.pulled} items before any result"
            src.consuming = True
            gate.set()
            for expected in range(20):
                assert next(it) == expected
                src.received += 1
        finally:
            gate.set()
        assert not src.overread.is_set(), f"read {src.pulled} items for 20 results"
        del it
    assert src.pulled <= 23


@pytest.mark.parametrize("kind", KINDS)
def test_map_with_buffersize_gives_every_result_in_order(kind: str) -> None:
    ex = make_stdlib(kind, 2)
    with ex:
        got = list(ex.map(mul, range(50), itertools.count(), buffersize=3))
        assert got == [i * i for i in range(50)]
        assert list(ex.map(abs, [], buffersize=1)) == []


@pytest.mark.parametrize("kind", KINDS)
def test_map_buffersize_validation(kind: str) -> None:
    """3.14: "buffersize must be an integer or None" (TypeError), "must be None or > 0"."""
    ex = make_stdlib(kind, 1)
    with ex:
        with pytest.raises(ValueError, match="buffersize"):
            ex.map(abs, range(3), buffersize=0)
        with pytest.raises(TypeError, match="buffersize"):
            ex.map(abs, range(3), buffersize=1.5)  # type: ignore[arg-type]


# -- exceptions --------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_map_raises_an_exception_at_its_position(kind: str) -> None:
    """executor.py test_map_exception: the results before it, then the call's
    exception; items after it were run all the same (each is its own call)."""
    tally = Tally()
    ex = make_stdlib(kind, 2)
    with ex:
        it = ex.map(functools.partial(record_divmod, tally), [1, 1, 1, 1], [2, 3, 0, 5])
        assert wait_until(lambda: tally.count((1, 5)) == 1)   # the item after the failure
        assert next(it) == (0, 1)
        assert next(it) == (0, 1)
        with pytest.raises(ZeroDivisionError):
            next(it)
        with pytest.raises(StopIteration):   # as a generator that raised: finished
            next(it)


@pytest.mark.parametrize("kind", KINDS)
def test_a_map_after_a_map_that_raised(kind: str) -> None:
    """An executor is not spoilt by a map whose call raised: the next map runs
    (``timeout``: so that a hang fails the test rather than stalls it)."""
    ex = make_stdlib(kind, 2)
    with ex:
        with pytest.raises(ZeroDivisionError):
            list(ex.map(divmod, [1] * 5, [1, 1, 0, 1, 1]))
        assert list(ex.map(abs, range(-3, 3), timeout=20)) == [3, 2, 1, 0, 1, 2]
        assert ex.submit(pow, 2, 3).result(20) == 8


# -- timeout: a deadline for the whole map ---------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_map_timeout_is_a_deadline_from_the_call_of_map(kind: str) -> None:
    """executor.py test_map_timeout, with ten calls of 0.3 s on one worker: each result
    comes about 0.3 s after the previous one, far within the timeout of 1.5 s, yet
    the map as a whole would take 3 s: ``next()`` raises once 1.5 s have passed since
    the call of map."""
    ex = make_stdlib(kind, 1)
    with ex:
        ex.submit(pow, 1, 1).result(20)    # the worker is up: its start is not timed
        results = []
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            for r in ex.map(sleep_then, [0.3] * 10, range(10), timeout=1.5):
                results.append(r)
        elapsed = time.monotonic() - t0
    assert results == list(range(len(results)))
    assert len(results) < 10
    assert 1.5 <= elapsed < 1.5 + 5, elapsed


@pytest.mark.parametrize("kind", KINDS)
def test_map_timeout_cancels_what_has_not_started(kind: str) -> None:
    """test_thread_pool.py test_executor_map_current_future_cancel: ``timeout=0`` on a
    busy pool raises at the first ``next()``; closing the iterator then cancels the
    items, which never run."""
    gate, tally = Gate(), Tally()
    ex = make_stdlib(kind, 1)
    with ex:
        busy = ex.submit(record_then_wait, tally, "first", gate, "first")
        assert started(tally, "first")
        try:
            it = ex.map(functools.partial(record, tally, "item"), ["second", "third"],
                        timeout=0)
            with pytest.raises(TimeoutError):
                next(it)
            del it
        finally:
            gate.set()
        assert busy.result(20) == "first"
    assert tally.count("item") == 0
