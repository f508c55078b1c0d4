"""Contract 4 (threads and asyncio): per-task timeouts; no run hangs on one bad task."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import conveyor
from conveyor.errors import TaskTimeout, item_index

from ._crossproc import Gate, Tally
from .conftest import BackendName


def test_coroutine_is_cancelled_on_timeout() -> None:
    cancelled = threading.Event()

    async def work(x: int) -> int:
        if x == 3:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return x

    t0 = time.monotonic()
    out: list[Any] = list(conveyor.map(work, range(8), timeout=0.2, on_error="return", batch=4))
    assert time.monotonic() - t0 < 10
    assert cancelled.is_set()
    assert isinstance(out[3], TaskTimeout) and item_index(out[3]) == 3
    # its batch-mates (4 per batch) are not lost
    assert [x for i, x in enumerate(out) if i != 3] == [0, 1, 2, 4, 5, 6, 7]


def test_coroutine_that_swallows_cancel_still_times_out() -> None:
    async def stubborn(x: int) -> int:
        if x == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                return -1   # ignores the cancellation
        return x

    out: list[Any] = list(conveyor.map(stubborn, range(4), timeout=0.2, on_error="return"))
    assert isinstance(out[1], TaskTimeout)
    assert out[0] == 0 and out[2:] == [2, 3]


@pytest.mark.leaves_abandoned_threads
def test_thread_task_is_abandoned_and_reported() -> None:
    release = threading.Event()
    finished = threading.Event()

    def work(x: int) -> int:
        if x == 2:
            release.wait(30)     # a call no thread can interrupt
            finished.set()
        return x

    t0 = time.monotonic()
    results = conveyor.map(work, range(10), workers=2, timeout=0.2, on_error="return",
                           batch=5)
    out: list[Any] = list(results)
    assert time.monotonic() - t0 < 10          # the run did not wait for the stuck call
    assert isinstance(out[2], TaskTimeout) and item_index(out[2]) == 2
    assert [x for i, x in enumerate(out) if i != 2] == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert results.stats.timed_out == 1
    assert not finished.is_set()               # still running, abandoned
    release.set()
    assert finished.wait(10)                   # ...and it ends once its call returns
    from .conftest import wait_no_conveyor_threads
    assert not wait_no_conveyor_threads()


def test_timeout_then_raise_policy(backend: BackendName) -> None:
    gate = Gate()

    if backend == "asyncio":
        async def afn(x: int) -> int:
            if x == 5:
                await asyncio.sleep(30)
            return x
        fn: Callable[[int], Any] = afn
    else:
        def sfn(x: int) -> int:
            if x == 5:
                gate.wait(30)
            return x
        fn = sfn
    got = []
    t0 = time.monotonic()
    with pytest.raises(TaskTimeout) as info:
        for r in conveyor.map(fn, range(20), backend=backend,
                              timeout=0.2):
            got.append(r)
    gate.set()
    assert time.monotonic() - t0 < 10
    assert got == [0, 1, 2, 3, 4]
    assert info.value.index == 5
    assert isinstance(info.value, TimeoutError)


def test_timed_out_task_is_retried(backend: BackendName) -> None:
    tries = Tally()

    if backend == "asyncio":
        async def afn(x: int) -> int:
            if tries.add(x) == 1 and x == 1:
                await asyncio.sleep(30)
            return x
        fn: Callable[[int], Any] = afn
    else:
        gate = Gate()

        def sfn(x: int) -> int:
            if tries.add(x) == 1 and x == 1:
                gate.wait(2)
            return x
        fn = sfn
    out: list[Any] = list(conveyor.map(fn, range(3), backend=backend,
                            timeout=0.2, retries=1, backoff=0.001))
    assert out == [0, 1, 2]
    assert tries.count(1) == 2
