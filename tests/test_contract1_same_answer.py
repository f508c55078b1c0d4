"""Contract 1: the same answer as ``builtins.map``, on every backend and setting."""

from __future__ import annotations

import builtins
import contextlib
from collections import Counter
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor

from .conftest import BACKENDS, BackendName, dask_session_client, task


def square(x: int) -> int:
    return x * x


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.integers(-10**6, 10**6), max_size=300),
    backend=st.sampled_from(BACKENDS),
    workers=st.integers(1, 9),
    batch=st.one_of(st.just("auto"), st.integers(1, 50)),
    ordered=st.booleans(),
    window=st.one_of(st.none(), st.integers(50, 400)),
)
def test_same_answer_as_map(items: list[int], backend: BackendName, workers: int,
                            batch: int | Literal["auto"],
                            ordered: bool, window: int | None) -> None:
    fn = task(backend, square)
    expected = list(builtins.map(square, items))
    # dask: the session's cluster (a LocalCluster per example would take most of
    # the test's time; test_dask.py covers the one conveyor starts)
    current = dask_session_client().as_current() if backend == "dask" else \
        contextlib.nullcontext()
    with current:
        results = conveyor.map(fn, iter(items), backend=backend,
                               workers=workers, batch=batch, ordered=ordered, window=window)
        got = list(results)
    if ordered:
        assert got == expected
    else:
        assert Counter(got) == Counter(expected)
    s = results.stats
    assert (s.submitted, s.done, s.failed, s.in_flight) == (len(items), len(items), 0, 0)


@pytest.mark.parametrize("ordered", [True, False])
def test_large_input_every_item_once(backend: BackendName, ordered: bool) -> None:
    n = 50_000
    got = list(conveyor.map(task(backend, square), range(n), ordered=ordered))
    if ordered:
        assert got == [x * x for x in range(n)]
    else:
        assert sorted(got) == [x * x for x in range(n)]


def test_unordered_streams_in_completion_order(backend: BackendName) -> None:

    from .conftest import Gate, waiting_task

    gate = Gate()
    fn = waiting_task(backend, gate, lambda x: x == 0)
    seen = []
    with conveyor.map(fn, range(20), backend=backend,
                      workers=4, ordered=False) as results:
        for r in results:
            seen.append(r)
            if len(seen) == 19:
                gate.set()   # item 0 is held until everything else has arrived
    assert seen[-1] == 0
    assert sorted(seen) == list(range(20))
