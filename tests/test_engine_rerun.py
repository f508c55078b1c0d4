"""Re-runs decided by the core: items that ran but whose outcomes were lost.

A backend only reports what happened (``Completion.rerun``, ``split``); the
core runs those items again, counts them in ``stats.rerun``, and gives up
on an item lost more than ``LOST_TRIES`` times with ``WorkerCrashed``.
"""

from __future__ import annotations

from typing import Any

from conveyor._backends._base import Batch, Completion
from conveyor._calls import Calls
from conveyor._engine.clock import FakeClock
from conveyor._engine.policy import LOST_TRIES
from conveyor.errors import WorkerCrashed

from ._fake_engine import Engine, FakeBackend, value


def lose(e: Engine, b: Batch, a: int = 0, z: int | None = None, *, split: bool = False,
         cause: BaseException | None = None) -> None:
    """Report that items ``a..z-1`` of ``b`` ran and their outcomes were lost
    (outcomes before ``a`` computed), then step."""
    z = b.limit if z is None else z
    values: list[Any] = [value(x) for x in b.items[:a]] + [None] * (z - a)
    e.core.completed(Completion(b, values, None, 0.001, rerun=(a, z), split=split,
                                cause=cause))
    e.step()


def test_lost_outcomes_are_run_again_and_counted() -> None:
    e = Engine(range(4), workers=1, batch=4, on_error="return")
    e.step()
    (b,) = e.batches
    crash = WorkerCrashed("the worker died")
    e.complete(b, [None, None, None, crash], [3], rerun=(0, 3))
    assert e.stats().rerun == 3
    (again,) = e.batches
    assert again.items == [0, 1, 2] and again.attempt == 0
    e.complete(again)
    assert e.consume() == [value(0), value(1), value(2), crash]
    s = e.stats()
    assert (s.done, s.failed, s.retried, s.rerun) == (3, 1, 0, 3)
    assert "3 re-run" in str(s)
    assert e.core.finished()


def test_a_rerun_is_counted_by_the_items_it_runs_again() -> None:
    e = Engine(range(6), workers=1, batch=6)
    e.step()
    (b,) = e.batches
    lose(e, b, 2, 4)   # items 0-1 came back, 2-3 were lost, 4-5 did not run
    assert sorted(x.items for x in e.batches) == [[2, 3], [4, 5]]
    assert e.stats().rerun == 2
    assert e.run_all() == [value(i) for i in range(6)]
    assert e.stats().rerun == 2 and e.stats().done == 6


def test_an_item_lost_more_than_lost_tries_times_fails_with_worker_crashed() -> None:
    e = Engine(range(2), workers=1, batch=2, on_error="return")
    e.step()
    cause = RuntimeError("the result died with its worker")
    for times in range(LOST_TRIES):
        (b,) = e.batches
        lose(e, b, cause=cause)
        assert e.stats().rerun == 2 * (times + 1)
    (b,) = e.batches
    lose(e, b, cause=cause)   # once more: no more re-runs
    assert not e.batches
    out = e.consume()
    assert len(out) == 2 and all(isinstance(x, WorkerCrashed) for x in out)
    assert out[0] is not out[1]
    assert f"lost {LOST_TRIES + 1} times" in str(out[0])
    assert out[0].__cause__ is cause
    s = e.stats()
    assert (s.rerun, s.failed, s.done) == (2 * LOST_TRIES, 2, 0)
    assert e.core.finished() and e.error is None


def test_an_item_lost_for_good_is_raised_like_any_failure() -> None:
    e = Engine(range(3), workers=1, batch=3)
    e.step()
    for times in range(LOST_TRIES + 1):
        (b,) = e.batches
        lose(e, b, 1 if times == 0 else 0)   # item 0 came back the first time
    assert isinstance(e.error, WorkerCrashed)
    assert e.consume() == [value(0)]   # what comes before it is handed out


def test_an_item_lost_for_good_is_retried_if_retries_allow() -> None:
    e = Engine(range(1), workers=1, batch=1, retries=1, backoff=1.0)
    e.step()
    for _ in range(LOST_TRIES + 1):
        (b,) = e.batches
        lose(e, b)
    assert not e.batches and e.stats().retried == 1
    e.clock.advance(2.0)   # the backoff: at most 1.5 x 1 s
    e.step()
    (retry,) = e.batches
    assert retry.attempt == 1
    e.complete(retry)
    assert e.consume() == [value(0)]
    s = e.stats()
    assert (s.rerun, s.retried, s.done, s.failed) == (LOST_TRIES, 1, 1, 0)


def test_split_runs_what_was_lost_one_item_per_batch() -> None:
    e = Engine(range(5), workers=2, batch=4)
    e.step()
    b = next(x for x in e.batches if len(x.items) == 4)
    lose(e, b, split=True)
    pieces = [x for x in e.batches if x.group is b.group]
    assert [(x.items, x.start) for x in pieces] == [([i], i) for i in range(4)]
    assert e.stats().rerun == 4
    for x in reversed(e.batches):   # out of order: still handed out in order
        e.complete(x)
    assert e.consume() == [value(i) for i in range(5)]
    assert e.stats().done == 5 and e.core.finished()


def test_split_of_items_that_did_not_run_is_not_a_rerun() -> None:
    # The backend could not send them together: nothing ran, nothing was lost.
    e = Engine(range(3), workers=1, batch=3)
    e.step()
    (b,) = e.batches
    e.core.completed(Completion(b, [], None, 0.0, split=True))
    assert [x.items for x in e.batches] == [[0], [1], [2]]
    assert e.stats().rerun == 0
    assert e.run_all() == [value(i) for i in range(3)]


def test_the_lost_count_carries_over_to_the_pieces_of_a_split() -> None:
    e = Engine(range(2), workers=1, batch=2, on_error="return")
    e.step()
    for _ in range(LOST_TRIES - 1):
        (b,) = e.batches
        lose(e, b)
    (b,) = e.batches
    lose(e, b, split=True)   # the LOST_TRIES-th loss: run one by one
    first, second = e.batches
    lose(e, first)           # lost once too often
    e.complete(second)
    out = e.consume()
    assert isinstance(out[0], WorkerCrashed) and out[1] == value(1)
    assert e.stats().rerun == 2 * LOST_TRIES


def test_lost_outcomes_after_the_run_stopped_are_not_counted_as_done() -> None:
    e = Engine(range(4), workers=1, batch=4)
    e.step()
    (b,) = e.batches
    e.core.stop()
    lose(e, b, 1)
    s = e.stats()
    assert (s.done, s.rerun) == (1, 0)
    assert not e.batches and e.core.finished()


def test_a_cancelled_batch_is_not_run_again() -> None:
    e = Engine(range(4), workers=2, batch=2, ordered=True)
    e.step()
    a, b = e.batches
    e.fail(a, 0, ValueError("first"))    # raised: what comes after it is cancelled
    assert b.cancelled
    lose(e, b)
    assert not e.batches and e.stats().rerun == 0


# -- single calls (Pool.submit): the same rule -------------------------------------


def test_a_call_whose_outcome_was_lost_runs_again_then_fails_with_worker_crashed() -> None:
    backend = FakeBackend(1, FakeClock())
    calls = Calls(backend)
    fut = calls.submit(value, 7)
    cause = RuntimeError("the result died with its worker")
    for times in range(LOST_TRIES + 1):
        assert len(backend.submitted) == times + 1   # sent again at once: no backoff
        b = backend.submitted[-1]
        assert b.items == [7] and b.attempt == 0
        b.sink(Completion(b, [None], None, 0.0, rerun=(0, 1), cause=cause))
    assert len(backend.submitted) == LOST_TRIES + 1
    error = fut.exception(timeout=0)
    assert isinstance(error, WorkerCrashed) and error.__cause__ is cause


def test_a_call_run_again_after_a_lost_outcome_gives_its_result() -> None:
    backend = FakeBackend(1, FakeClock())
    calls = Calls(backend)
    fut = calls.submit(value, 7)
    first = backend.submitted[-1]
    first.sink(Completion(first, [None], None, 0.0, rerun=(0, 1)))
    again = backend.submitted[-1]
    assert again is not first
    again.sink(Completion(again, [value(7)], None, 0.0))
    assert fut.result(timeout=0) == value(7)
