"""The core alone: retries (backoff on a fake clock, retry_on, stats) and the
error policies raise / skip / return / defer."""

from __future__ import annotations

import pytest

from conveyor._engine.policy import Raised
from tests._fake_engine import Engine, value


def test_a_failure_is_retried_after_its_backoff() -> None:
    e = Engine(range(2), workers=2, batch=1, retries=2, backoff=1.0)
    e.step()
    a, b = e.batches
    e.fail(a, 0, ValueError("flaky"))
    assert len(e.backend.submitted) == 2          # not at once: it waits its backoff
    now = e.clock.now()
    due = e.core.wake_at(now)
    assert now + 0.5 <= due <= now + 1.5          # 1 s, jittered by +/-50%
    e.clock.advance(due - now - 0.01)
    e.step()
    assert len(e.backend.submitted) == 2
    e.clock.advance(0.01)
    e.step()
    retry = e.backend.submitted[2]
    assert retry.items == [0] and retry.attempt == 1 and retry.group is a.group
    e.complete(b)
    assert e.results == []                        # item 0 comes first
    e.complete(retry)
    assert e.results == [value(0), value(1)]
    s = e.stats()
    assert s.retried == 1 and s.failed == 0 and s.done == 2


def test_the_last_attempt_fails_for_good_with_the_count_in_its_note() -> None:
    e = Engine(range(1), workers=1, batch=1, retries=2, backoff=1.0, on_error="return")
    e.step()
    for attempt in range(3):
        (b,) = e.batches
        assert b.attempt == attempt
        e.fail(b, 0, KeyError(attempt))
        e.clock.advance(10.0)                     # past any backoff: 1 s then 2 s, +/-50%
        e.step()
    assert not e.batches
    (error,) = e.results
    assert isinstance(error, KeyError) and error.args == (2,)
    assert any("(after 3 attempts)" in n for n in getattr(error, "__notes__", []))
    s = e.stats()
    assert s.retried == 2 and s.failed == 1


def test_retry_on_limits_which_failures_are_retried() -> None:
    e = Engine(range(2), workers=2, batch=1, retries=3, retry_on=(KeyError,))
    e.step()
    a, b = e.batches
    boom = ValueError("not retried")
    e.fail(a, 0, boom)
    assert e.error is boom
    assert e.stats().retried == 0
    assert set(e.backend.cancelled) == {b}


def test_raise_hands_out_what_came_before_and_cancels_what_comes_after() -> None:
    e = Engine(range(4), workers=4, batch=1)
    e.step()
    b = e.batches
    e.complete(b[3])
    boom = ValueError("item 1")
    e.fail(b[1], 0, boom)
    # Item 2 comes after the failure: cancelled; item 0 before it: kept.
    assert set(e.backend.cancelled) == {b[2]}
    assert e.core.end is None
    e.complete(b[0])
    assert e.results == [value(0)]
    assert e.error is boom
    assert boom.__conveyor_index__ == 1  # type: ignore[attr-defined]
    assert any("item #1" in n and "fake backend" in n for n in getattr(boom, "__notes__", []))
    e.complete(b[2], [])
    assert e.core.finished()


def test_raise_unordered_raises_at_once() -> None:
    e = Engine(range(3), workers=3, batch=1, ordered=False)
    e.step()
    b = e.batches
    e.complete(b[2])
    boom = RuntimeError("now")
    e.fail(b[0], 0, boom)
    assert e.results == [value(2)]
    assert e.error is boom


def test_the_earliest_failure_is_raised_when_several_fail() -> None:
    e = Engine(range(3), workers=3, batch=1)
    e.step()
    b = e.batches
    late, early = ValueError("item 2"), ValueError("item 1")
    e.fail(b[2], 0, late)
    e.fail(b[1], 0, early)
    e.complete(b[0])
    assert e.results == [value(0)]
    assert e.error is early


def test_skip_drops_failures_and_frees_their_window_room() -> None:
    e = Engine(range(4), workers=2, batch=2, on_error="skip")
    e.step()
    a, b = e.batches
    e.fail(a, 1, ValueError("skipped"))
    e.complete(b)
    assert e.consume() == [value(0), value(2), value(3)]
    assert e.core.intake.window.held() == 0
    s = e.stats()
    assert s.skipped == 1 and s.failed == 1 and s.done == 3
    assert e.core.finished() and e.error is None


@pytest.mark.parametrize("ordered", [True, False])
def test_return_puts_the_exception_in_place_of_the_result(ordered: bool) -> None:
    e = Engine(range(3), workers=1, batch=3, on_error="return", ordered=ordered)
    e.step()
    (b,) = e.batches
    boom = ValueError("returned")
    e.fail(b, 1, boom)
    assert e.results == [value(0), boom, value(2)]
    assert e.core.finished() and e.error is None


def test_defer_puts_a_marker_the_consumer_raises() -> None:
    e = Engine(range(2), workers=2, batch=1, on_error="defer")
    e.step()
    a, b = e.batches
    boom = ValueError("deferred")
    e.fail(a, 0, boom)
    e.complete(b)
    first, second = e.results
    assert isinstance(first, Raised) and first.error is boom
    assert second == value(1)
    assert e.core.finished() and e.error is None
