"""The core alone: the window bounds what is taken from the input; the
consumer's ``took`` frees room. Fake backend, fake clock."""

from __future__ import annotations

import itertools

from tests._fake_engine import Engine, value


def test_nothing_is_pulled_past_the_window() -> None:
    e = Engine(itertools.count(), workers=2, window=4, batch=1)
    e.step()
    assert e.pulled == 4 and len(e.batches) == 4
    for b in e.batches:
        e.complete(b)
    # Handed out but not yet taken by the consumer: still in the window.
    assert len(e.results) == 4
    e.step()
    assert e.pulled == 4
    assert e.consume() == [value(i) for i in range(4)]
    assert e.pulled == 8


def test_results_waiting_to_be_reordered_count_against_the_window() -> None:
    e = Engine(itertools.count(), workers=4, window=4, batch=1)
    e.step()
    b = e.batches
    for x in b[1:]:
        e.complete(x)
    e.consume()   # nothing was handed out: item 0 holds the rest back
    assert e.results == [] and e.pulled == 4
    e.complete(b[0])
    assert e.consume() == [value(i) for i in range(4)]
    assert e.pulled == 8


def test_room_is_asked_for_once_a_few_items_are_taken_not_at_each() -> None:
    e = Engine(itertools.count(), workers=2, window=16, batch=1)
    e.step()
    assert e.pulled == 16
    window = e.core.intake.window
    e.complete(e.batches[0])
    e.complete(e.batches[0])
    assert len(e.results) == 2
    # The core waits for a refill's worth of room (here 2 items), so a
    # consumer taking one item does not wake it.
    assert window.took(1) is False
    assert window.took(1) is True
    e.step()
    assert e.pulled == 18


def test_the_input_ends_and_the_run_finishes() -> None:
    e = Engine(iter(range(10)), workers=3, window=6, batch=2)
    assert e.run_all() == [value(i) for i in range(10)]
    assert e.core.finished() and e.error is None
    s = e.stats()
    assert s.submitted == 10 and s.done == 10


def test_an_input_that_fails_ends_the_run_with_its_error_after_the_items_before_it() -> None:
    def items() -> object:
        yield 0
        yield 1
        raise OSError("the input broke")

    e = Engine(items(), workers=2, batch=1)   # type: ignore[arg-type]
    assert e.run_all() == [value(0), value(1)]
    assert e.core.finished()
    error = e.error
    assert isinstance(error, OSError)
    assert "conveyor: raised by the input iterable after 2 items" in getattr(error, "__notes__", [])


def test_a_known_length_spreads_the_tail_over_the_workers() -> None:
    # At most the items left over the workers, for each batch: the last
    # batches shrink, so that the workers finish together.
    e = Engine(range(8), workers=4, total=8, batch=8)
    e.step()
    assert [len(b.items) for b in e.batches] == [2, 2, 1, 1, 1, 1]
