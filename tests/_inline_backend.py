"""A backend written outside conveyor, against the ``Backend`` ABC only.

``workers`` threads take whole batches from one queue and run their items in
order. No stealing, no harvest, no per-item timeouts (``running`` reports
nothing, so a ``timeout=`` is never enforced here): what the ABC requires, and
the capability lines that say so. ``tests/test_registry.py`` registers it and
runs it through ``map``, ``amap``, ``Pool``, a pipeline stage and the command line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from conveyor._backends._base import (
    Backend,
    Batch,
    Completion,
    dropped,
    initializer_failed,
    join,
    settle_unrunnable,
)
from conveyor._worker import set_thread_state

__all__ = ["InlineBackend"]


class InlineBackend(Backend):
    name = "inline"
    times_items = False   # a timed batch holds one item (and is not timed here)

    @classmethod
    def default_workers(cls) -> int:
        return 2

    def __init__(self, workers: int, *, initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        self.workers = workers
        self._initializer = initializer
        self._initargs = initargs
        self._queue: SimpleQueue[Batch | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def start(self) -> None:
        with self._lock:
            while len(self._threads) < self.workers and not self._closed:
                t = threading.Thread(target=self._work, daemon=True,
                                     name=f"conveyor-inline-{len(self._threads) + 1}")
                self._threads.append(t)
                t.start()

    def submit(self, batch: Batch) -> None:
        if self._closed:
            batch.sink(dropped(batch))
            return
        self._queue.put(batch)

    def cancel(self, batch: Batch) -> None:
        batch.cancelled = True   # the worker stops before its next item

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        with self._lock:
            first = not self._closed
            self._closed = True
            threads = list(self._threads)
        if first:
            if cancel:
                while not self._queue.empty():
                    b = self._queue.get()
                    if b is not None:
                        b.sink(dropped(b))
            for _ in threads:
                self._queue.put(None)
        if wait:
            for t in threads:
                if t is not threading.current_thread():
                    join(t)

    def _work(self) -> None:
        set_thread_state()
        init_error: BaseException | None = None
        if self._initializer is not None:
            try:
                self._initializer(*self._initargs)
            except BaseException as exc:
                init_error = initializer_failed(self._initializer, exc)
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if settle_unrunnable(batch, init_error):
                continue
            t0 = time.monotonic()
            out: list[Any] = []
            errors: list[int] = []
            for x in batch.items[:batch.limit]:
                if batch.cancelled:
                    break   # the items after the prefix are not run
                try:
                    out.append(batch.fn(x))
                except BaseException as exc:   # the task's own failure
                    errors.append(len(out))
                    out.append(exc)
            batch.sink(Completion(batch, out, errors or None, time.monotonic() - t0))
