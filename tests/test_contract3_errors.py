"""Contract 3: errors keep their type, traceback and index; the three policies; retries."""

from __future__ import annotations

import itertools
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

import conveyor
from conveyor.errors import item_index

from ._crossproc import Tally
from .conftest import BackendName, task


class Boom(Exception):
    pass


def fail_at_7(x: int) -> int:
    if x == 7:
        raise Boom(f"bad item {x}")
    return x


def test_raise_keeps_type_traceback_and_index(backend: BackendName) -> None:
    got = []
    with pytest.raises(Boom) as info:
        for r in conveyor.map(task(backend, fail_at_7), range(100), backend=backend,
                              workers=3):
            got.append(r)
    assert got == list(range(7))          # ordered: the results before it, then the error
    exc = info.value
    assert item_index(exc) == 7
    text = "".join(traceback.format_exception(exc))
    assert "fail_at_7" in text             # the worker-side frame
    assert 'raise Boom(f"bad item {x}")' in text
    assert "item #7" in text               # the note


def test_raise_unordered(backend: BackendName) -> None:
    with pytest.raises(Boom) as info:
        list(conveyor.map(task(backend, fail_at_7), range(100), backend=backend,
                          ordered=False))
    assert item_index(info.value) == 7


def test_return_policy(backend: BackendName) -> None:
    out = list(conveyor.map(task(backend, fail_at_7), range(10), backend=backend,
                            on_error="return"))
    assert out[:7] == list(range(7)) and out[8:] == [8, 9]
    assert isinstance(out[7], Boom) and item_index(out[7]) == 7


def test_skip_policy_counts(backend: BackendName) -> None:
    def odd_fails(x: int) -> int:
        if x % 2:
            raise ValueError(x)
        return x

    results = conveyor.map(task(backend, odd_fails), range(1000), backend=backend,
                           on_error="skip")
    assert list(results) == list(range(0, 1000, 2))
    s = results.stats
    assert (s.done, s.failed, s.skipped) == (500, 500, 500)


def test_first_failure_stops_the_input(backend: BackendName) -> None:
    pulled = 0

    def source() -> Iterator[int]:
        nonlocal pulled
        for i in range(10**9):
            pulled = i + 1
            yield i

    with pytest.raises(Boom):
        list(conveyor.map(task(backend, fail_at_7), source(), backend=backend, window=16))
    assert pulled < 100


def test_retries_then_success(backend: BackendName) -> None:
    attempts = Tally()

    def flaky(x: int) -> int:
        n = attempts.add(x)
        if x % 3 == 0 and n < 3:
            raise ConnectionError(f"try {n}")
        return x

    results = conveyor.map(task(backend, flaky), range(30), backend=backend, retries=2,
                           backoff=0.001)
    assert list(results) == list(range(30))
    assert results.stats.retried == 20          # 10 flaky items x 2 retries
    assert all(attempts.count(x) == (3 if x % 3 == 0 else 1) for x in range(30))


def test_retries_exhausted_and_retry_on(backend: BackendName) -> None:
    calls = Tally()

    def always(x: int) -> int:
        calls.add(x)
        if x == 1:
            raise ConnectionError("down")
        if x == 2:
            raise KeyError("not retried")
        return x

    out = list(conveyor.map(task(backend, always), range(4), backend=backend, retries=3,
                            backoff=0.001, retry_on=ConnectionError, on_error="return"))
    assert isinstance(out[1], ConnectionError) and isinstance(out[2], KeyError)
    assert calls.count(1) == 4 and calls.count(2) == 1
    assert "after 4 attempts" in "".join(getattr(out[1], "__notes__", []))


def test_backoff_is_exponential(backend: BackendName) -> None:

    calls = Tally()

    def fails(x: int) -> int:
        calls.add(x)
        raise OSError("always")

    out = list(conveyor.map(task(backend, fails), [0], backend=backend, retries=3,
                            backoff=0.02, on_error="return"))
    assert isinstance(out[0], OSError)
    gaps = [b - a for a, b in itertools.pairwise(calls.stamps(0))]
    # backoff * 2**attempt, jittered by +/-50%: at least 0.01, 0.02, 0.04 s
    assert len(gaps) == 3
    for gap, floor in zip(gaps, [0.01, 0.02, 0.04], strict=False):
        assert gap >= floor * 0.95


def test_input_iterable_error_after_results(backend: BackendName) -> None:
    def source() -> Iterator[int]:
        yield from range(5)
        raise RuntimeError("source broke")

    got = []
    with pytest.raises(RuntimeError, match="source broke") as info:
        for r in conveyor.map(task(backend, lambda x: x), source(), backend=backend):
            got.append(r)
    assert got == list(range(5))
    assert "input iterable" in "".join(getattr(info.value, "__notes__", []))


def test_task_raising_stopiteration_is_an_error(backend: BackendName) -> None:
    def stop_at_3(x: int) -> int:
        if x == 3:
            raise StopIteration("not the end of the input")
        return x

    out: list[Any] = list(conveyor.map(task(backend, stop_at_3), range(10), backend=backend,
                                       on_error="return", batch=5))
    assert out[:3] == [0, 1, 2]
    assert out[4:] == [4, 5, 6, 7, 8, 9]
    assert isinstance(out[3], (StopIteration, RuntimeError))
