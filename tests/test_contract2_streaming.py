"""Contract 2: the input is read lazily and at most ``window`` items are taken ahead."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest

import conveyor

from .conftest import BackendName, Gate, task, waiting_task


class CountingSource:
    """An endless generator that counts how many items were pulled from it."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            self.pulled = i + 1
            yield i


def test_endless_generator(backend: BackendName) -> None:
    src = CountingSource()
    out = []
    for r in conveyor.map(task(backend, lambda x: x + 1), src, backend=backend):
        out.append(r)
        if len(out) == 10_000:
            break
    assert out == list(range(1, 10_001))


@pytest.mark.parametrize("window", [8, 64])
def test_slow_first_item_does_not_pull_the_input(backend: BackendName, window: int) -> None:
    gate = Gate()
    src = CountingSource()
    fn = waiting_task(backend, gate, lambda x: x == 0)
    with conveyor.map(fn, src, backend=backend, workers=4,
                      window=window) as results:
        it = iter(results)
        # Everything but item 0 finishes; the run must stop at the window.
        deadline = threading.Event()
        deadline.wait(0.3)   # give a runaway producer time to show itself
        assert src.pulled <= window
        gate.set()
        head = list(itertools.islice(it, 100))
    assert head == list(range(100))
    assert src.pulled <= 100 + window + 1


def test_slow_consumer_slows_the_producer(backend: BackendName) -> None:
    src = CountingSource()
    window = 32
    with conveyor.map(task(backend, lambda x: x), src, backend=backend,
                      window=window) as results:
        for i, r in enumerate(results):
            assert r == i
            # The producer may be at most a window (plus one chunk in hand) ahead.
            assert src.pulled <= i + 1 + 2 * window
            if i == 2_000:
                break


def test_memory_does_not_grow_with_input(backend: BackendName) -> None:
    """RSS after 400k items is close to RSS after 50k (no per-item accumulation)."""
    import gc

    import psutil

    proc = psutil.Process()
    fn = task(backend, lambda x: x)
    with conveyor.map(fn, itertools.count(), backend=backend) as results:
        for i, _ in enumerate(results):
            if i == 50_000:
                gc.collect()
                early = proc.memory_info().rss
            if i == 400_000:
                gc.collect()
                late = proc.memory_info().rss
                break
    assert late - early < 20 * 2**20, (early, late)
