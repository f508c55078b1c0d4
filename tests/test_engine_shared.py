"""The core alone, with a backend that shares batches (asyncio's): many workers
draw the items of one batch, and its outcomes come back in runs, out of order,
before the batch ends. Fake backend, fake clock: no threads, no sleeps."""

from __future__ import annotations

from conveyor._engine.intake import SHARED_SPLIT
from tests._fake_engine import Engine, value


def test_a_shared_batch_holds_several_items_even_when_items_are_slow() -> None:
    workers = 4 * SHARED_SPLIT
    shared = Engine(range(1000), workers=workers, shared=True)
    shared.step()
    first = shared.batches[0]
    shared.complete(first, busy=10.0)     # slow: a second per item, far over the target
    assert all(len(b.items) == workers // SHARED_SPLIT for b in shared.batches)
    # The same on a backend whose batches are one worker's queue: one item each.
    alone = Engine(range(1000), workers=workers)
    alone.step()
    alone.complete(alone.batches[0], busy=10.0)
    assert {len(b.items) for b in alone.batches} == {1}


def test_runs_of_a_running_batch_go_out_at_once_unordered() -> None:
    e = Engine(range(8), workers=8, batch=8, shared=True, ordered=False)
    e.step()
    (b,) = e.batches
    e.report(b, 5, [value(5), value(6)])
    assert e.results == [value(5), value(6)]
    e.report(b, 0, [value(0)])
    assert e.results == [value(5), value(6), value(0)]
    assert e.batches == [b]                  # still running
    e.report(b, 1, [value(i) for i in range(1, 5)])
    e.report(b, 7, [value(7)], more=False)   # the end: nothing before it is missing
    assert sorted(e.results) == [value(i) for i in range(8)]
    assert e.batches == [] and e.core.finished()
    assert e.stats().done == 8


def test_ordered_runs_wait_for_the_items_before_them() -> None:
    e = Engine(range(6), workers=6, batch=6, shared=True)
    e.step()
    (b,) = e.batches
    e.report(b, 2, [value(2), value(3)])
    assert e.results == []
    e.report(b, 0, [value(0)])
    assert e.results == [value(0)]
    e.report(b, 1, [value(1)])
    assert e.results == [value(i) for i in range(4)]
    e.report(b, 4, [value(4), value(5)], more=False)
    assert e.results == [value(i) for i in range(6)]
    assert e.core.finished()


def test_the_items_a_shared_batch_did_not_draw_run_again() -> None:
    # The last completion ends at position 3: items 3.. were never drawn.
    e = Engine(range(5), workers=5, batch=5, shared=True)
    e.step()
    (b,) = e.batches
    e.report(b, 0, [value(0), value(1)])
    e.report(b, 2, [value(2)], more=False)
    (rest,) = e.batches
    assert rest.items == [3, 4] and rest.start == 3 and rest.group is b.group
    e.complete(rest)
    assert e.results == [value(i) for i in range(5)]


def test_a_failure_in_a_run_is_retried_alone() -> None:
    e = Engine(range(4), workers=4, batch=4, shared=True, retries=1)
    e.step()
    (b,) = e.batches
    boom = ValueError("boom")
    e.report(b, 1, [boom, value(2)], [0])
    e.report(b, 0, [value(0)])
    e.report(b, 3, [value(3)], more=False)
    assert e.results == [value(0)]           # item 1 waits for its retry
    e.clock.advance(10.0)                    # past its backoff
    e.step()
    (again,) = e.batches
    assert again.items == [1] and again.attempt == 1
    e.complete(again)
    assert e.results == [value(i) for i in range(4)]
    assert e.stats().retried == 1


def test_a_failure_in_a_run_raises_after_the_results_before_it() -> None:
    e = Engine(range(4), workers=4, batch=4, shared=True)
    e.step()
    (b,) = e.batches
    boom = ValueError("boom")
    e.report(b, 2, [boom], [0])
    assert e.results == []
    e.report(b, 0, [value(0), value(1)])
    assert e.results == [value(0), value(1)]
    assert e.error is boom
    assert b in e.backend.cancelled


def test_runs_after_a_stop_are_counted_not_handed_out() -> None:
    e = Engine(range(4), workers=4, batch=4, shared=True, ordered=False)
    e.step()
    (b,) = e.batches
    e.core.stop()
    e.report(b, 0, [value(0), value(1)])
    e.report(b, 2, [], more=False)
    assert e.results == []
    assert e.core.finished()
    assert e.stats().done == 2
