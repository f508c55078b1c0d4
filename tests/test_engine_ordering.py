"""The core alone: results in input order (or completion order), whatever order
batches complete in. Fake backend, fake clock: no threads, no sleeps."""

from __future__ import annotations

from tests._fake_engine import Engine, value


def test_ordered_results_wait_for_the_items_before_them() -> None:
    e = Engine(range(5), workers=5, batch=1)
    e.step()
    b = e.batches
    assert [x.items for x in b] == [[0], [1], [2], [3], [4]]
    e.complete(b[4])
    e.complete(b[2])
    assert e.results == []
    e.complete(b[0])
    assert e.results == [value(0)]
    e.complete(b[3])
    assert e.results == [value(0)]
    e.complete(b[1])
    assert e.results == [value(i) for i in range(5)]
    assert e.core.finished() and e.error is None


def test_unordered_results_come_in_completion_order() -> None:
    e = Engine(range(4), workers=4, batch=1, ordered=False)
    e.step()
    b = e.batches
    for i in (3, 1, 0, 2):
        e.complete(b[i])
    assert e.results == [value(3), value(1), value(0), value(2)]
    assert e.core.finished()


def test_a_batch_holds_several_items_and_hands_them_out_together() -> None:
    e = Engine(range(6), workers=2, batch=3)
    e.step()
    first, second = e.batches
    assert first.items == [0, 1, 2] and second.items == [3, 4, 5]
    e.complete(second)
    assert e.results == []
    e.complete(first)
    assert e.results == [value(i) for i in range(6)]


def test_the_finished_prefix_of_the_head_group_is_handed_out_early() -> None:
    # A batch that reports only its first items (its tail was stolen, or its
    # worker stopped): those go out now, the rest runs again as a new batch.
    e = Engine(range(4), workers=1, batch=4)
    e.step()
    (b,) = e.batches
    e.complete(b, [value(0), value(1)])
    assert e.results == [value(0), value(1)]
    (rest,) = e.batches
    assert rest.items == [2, 3] and rest.start == 2 and rest.group is b.group
    e.complete(rest)
    assert e.results == [value(i) for i in range(4)]
    assert e.core.finished()


def test_a_prefix_of_a_later_group_waits_for_the_groups_before_it() -> None:
    e = Engine(range(4), workers=2, batch=2)
    e.step()
    first, second = e.batches
    e.complete(second, [value(2)])
    assert e.results == []
    e.complete(first)
    assert e.results == [value(0), value(1), value(2)]
    (rest,) = e.batches
    e.complete(rest)
    assert e.results == [value(i) for i in range(4)]


def test_values_that_are_exceptions_or_odd_objects_are_results_like_any_other() -> None:
    # Failures are known by position, never by what the value is.
    e = Engine(range(2), workers=2, batch=1)
    e.step()
    a, b = e.batches
    returned = ValueError("returned, not raised")
    e.complete(b, [returned])
    e.complete(a, [None])
    assert e.results == [None, returned]
    assert e.stats().failed == 0
