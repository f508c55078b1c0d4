"""The core alone: stopping a run, re-runs of outcomes a worker lost, and lost batches."""

from __future__ import annotations

from conveyor.errors import PoolClosed, WorkerCrashed
from tests._fake_engine import Engine, value


def test_stop_cancels_what_is_in_flight_and_ends_once_it_reported() -> None:
    e = Engine(range(10), workers=3, batch=1)
    e.step()
    running = e.batches
    e.core.stop()
    assert e.backend.cancelled == running
    assert e.error is None
    assert not e.core.finished()
    e.step()
    assert len(e.backend.submitted) == len(running)   # nothing new starts
    e.complete(running[0])        # finished before it heard: counted, not handed out
    for b in running[1:]:
        e.complete(b, [])
    assert e.results == []
    assert e.core.finished()
    assert e.stats().done == 1


def test_stop_with_an_error_ends_with_that_error() -> None:
    e = Engine(range(4), workers=2, batch=1)
    e.step()
    closed = PoolClosed("the pool was closed")
    e.core.stop(closed)
    assert e.error is closed
    e.core.stop(RuntimeError("later"))
    assert e.error is closed   # the end is set once


def test_a_lost_batch_ends_the_run_with_pool_closed() -> None:
    e = Engine(range(2), workers=2, batch=1)
    e.step()
    a, b = e.batches
    from conveyor._backends._base import dropped
    e.core.completed(dropped(a))
    assert isinstance(e.error, PoolClosed)
    assert b in e.backend.cancelled


def test_outcomes_that_died_with_a_worker_are_run_again() -> None:
    # The worker ran items 0-2 and died on item 3: their outcomes are lost
    # (placeholders), item 3 failed with WorkerCrashed.
    e = Engine(range(4), workers=1, batch=4, on_error="return")
    e.step()
    (b,) = e.batches
    crash = WorkerCrashed("the worker died")
    e.complete(b, [None, None, None, crash], [3], rerun=(0, 3))
    (again,) = e.batches
    assert again.items == [0, 1, 2] and again.start == 0 and again.group is b.group
    assert e.results == []
    e.complete(again)
    assert e.results == [value(0), value(1), value(2), crash]
    assert e.core.finished()


def test_a_rerun_keeps_the_outcomes_before_it() -> None:
    e = Engine(range(4), workers=1, batch=4)
    e.step()
    (b,) = e.batches
    e.complete(b, [value(0), None, None], rerun=(1, 3))
    assert e.results == [value(0)]
    reruns = e.batches
    assert [x.items for x in reruns] == [[3], [1, 2]]
    for x in reruns:
        e.complete(x)
    assert e.results == [value(i) for i in range(4)]
