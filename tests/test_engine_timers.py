"""The core alone: timeouts on a fake clock, rate, stealing and harvesting."""

from __future__ import annotations

import math

from conveyor.errors import TaskTimeout
from tests._fake_engine import Engine, value


def test_an_item_is_expired_once_the_clock_passes_its_deadline() -> None:
    e = Engine(range(2), workers=2, batch=1, timeout=5.0)
    e.step()
    a, b = e.batches
    assert a.timed
    start = e.clock.now()
    e.backend.begin(a)
    e.clock.advance(4.0)
    assert e.core.wake_at(e.clock.now()) == start + 5.0
    assert e.backend.expired == []
    e.clock.advance(1.5)
    e.core.wake_at(e.clock.now())
    ((entry, error),) = e.backend.expired
    assert entry.batch is a and entry.pos == 0
    assert isinstance(error, TaskTimeout) and error.index == 0 and error.seconds == 5.0
    e.core.wake_at(e.clock.now())
    assert len(e.backend.expired) == 1   # once per item
    e.fail(a, 0, error)
    assert e.error is error
    assert e.stats().timed_out == 1
    assert set(e.backend.cancelled) == {b}


def test_a_timed_out_item_with_on_error_return_lets_the_run_go_on() -> None:
    e = Engine(range(2), workers=2, batch=1, timeout=1.0, on_error="return")
    e.step()
    a, b = e.batches
    e.backend.begin(a)
    e.clock.advance(2.0)
    e.core.wake_at(e.clock.now())
    ((_, error),) = e.backend.expired
    e.fail(a, 0, error)
    e.complete(b)
    assert e.results == [error, value(1)]
    assert e.core.finished() and e.error is None


def test_no_deadline_without_timeout() -> None:
    e = Engine(range(1), workers=1, batch=1)
    e.step()
    e.backend.begin(e.batches[0])
    e.clock.advance(1e6)
    e.core.wake_at(e.clock.now())
    assert e.backend.expired == []


def test_rate_spaces_the_starts() -> None:
    e = Engine(range(3), workers=3, rate=2.0)
    e.step()
    assert len(e.backend.submitted) == 1
    now = e.clock.now()
    assert e.core.wake_at(now) == now + 0.5
    e.clock.advance(0.49)
    e.step()
    assert len(e.backend.submitted) == 1
    e.clock.advance(0.01)
    e.step()
    assert len(e.backend.submitted) == 2


def test_a_long_batch_delivers_what_it_finished_and_gives_its_tail_to_idle_workers() -> None:
    e = Engine(range(8), workers=2, batch=8)
    e.step()
    (b,) = e.batches
    e.backend.work(b, 2)          # two items done, then stuck on the third
    e.next = next(b.it)  # type: ignore[arg-type, attr-defined]   # the third is running
    e.clock.advance(4 * e.backend.batch_target)
    e.core.wake_at(e.clock.now())
    e.step()
    assert e.results == [value(0), value(1)]   # harvested
    assert b.limit == 3
    (tail,) = [x for x in e.batches if x is not b]
    assert tail.items == [3, 4, 5, 6, 7] and tail.start == 3
    e.complete(tail)
    assert e.results == [value(0), value(1)]   # item 2 is still running
    e.complete(b, [value(0), value(1), value(2)])
    assert e.results == [value(i) for i in range(8)]
    assert e.core.finished()
    assert e.stats().done == 8


def test_an_idle_run_wants_no_wake_up() -> None:
    e = Engine(range(1), workers=1, batch=1)
    e.step()
    assert e.core.wake_at(e.clock.now()) == math.inf


def test_a_batch_no_worker_has_started_yet_is_looked_at_again() -> None:
    # The core looks at the batches in flight before a worker has taken the
    # long one: it must still come back to harvest it once it runs long.
    e = Engine(range(8), workers=2, batch=8)
    e.step()
    (b,) = e.batches
    now = e.clock.now()
    assert e.core.wake_at(now) < math.inf   # not taken yet: look again later
    e.backend.work(b, 2)          # now a worker runs it: two done, stuck on the third
    e.next = next(b.it)  # type: ignore[arg-type, attr-defined]
    for _ in range(3):
        e.clock.advance(4 * e.backend.batch_target)
        wake = e.core.wake_at(e.clock.now())
        assert wake < math.inf
        e.step()
    assert e.results == [value(0), value(1)]   # harvested
