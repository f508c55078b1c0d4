"""The thread driver: the core in a dispatcher thread of its own.

::

    input ─────────────────▶ ┌────── dispatcher thread ──────┐
                             │ Core (decides)                │──submit──▶ Backend
                             │ waits on its event queue:     │◀─Completion── (sink: events.put)
                             │ completions, "took n", stop   │
                             └──────────┬──────────▲─────────┘
                          outbox (lists │          │ events
                          of results)   ▼          │
                             Results / AsyncResults (the caller's thread or loop)

For the thread, process and dask backends, whose workers report from other
threads. The driver owns the mechanism: the queue it waits on, how often it
hands results to the consumer (each hand-over wakes the consumer's thread),
the GIL release once every worker has a batch, asking the backend for lost
work after a quiet second, and starting and closing the backend.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from queue import Empty, SimpleQueue
from typing import Any

from .._backends._base import Backend, Completion, join
from .._batching import Memory
from .._source import Source
from .core import Core
from .facade import Run
from .options import Options

__all__ = ["POLL_EVERY", "ThreadRun"]

_STOP = object()         # event: the consumer asked the run to stop
_INPUT = object()        # event: an async input has items again

POLL_EVERY = 1.0        # seconds without news before asking the backend for lost work


class _Stop:
    """Event: stop the run and raise ``error`` in the consumer."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ThreadRun(Run):
    """One map whose core runs in a dispatcher thread of its own."""

    def __init__(self, fn: Callable[[Any], Any], items: Iterator[Any] | Source,
                 total: int | None, backend: Backend, *, owns_backend: bool,
                 options: Options, memory: Memory | None = None) -> None:
        self.events: SimpleQueue[Any] = SimpleQueue()
        core = Core(fn, items, total, backend, options, sink=self.events.put, memory=memory)
        super().__init__(core, total, options)
        # Every worker has a batch: let them start (release the GIL once)
        # before preparing the batches that will queue up.
        core.pause = _yield_gil
        self._owns_backend = owns_backend
        self._thread = threading.Thread(target=self._main, name="conveyor-scheduler",
                                        daemon=True)

    # -- consumer-side API ---------------------------------------------------
    def start(self) -> None:
        source = self.core.intake.source
        if source is not None:
            events = self.events
            source.start(lambda: events.put(_INPUT))
        self._thread.start()

    def took(self, n: int) -> None:
        """The consumer took ``n`` items from the outbox: free window space.

        Called by the consumer only; wakes the dispatcher only when it waits
        for room in the window.
        """
        if self._window.took(n):
            self.events.put(0)

    def stop(self, error: BaseException | None = None) -> None:
        """Ask the dispatcher to cancel the run (non-blocking, idempotent).

        ``error``, if given, is raised in the consumer in place of the results
        not produced (e.g. ``PoolClosed`` when the pool is closed under it).
        """
        self.events.put(_STOP if error is None else _Stop(error))

    def close(self, *, wait: bool = True, error: BaseException | None = None) -> None:
        self.stop(error)
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            join(self._thread)   # in slices: Ctrl-C must land

    def wait_finished(self) -> None:
        """Wait (interruptibly) until the dispatcher thread has ended."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            join(self._thread)

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    # -- dispatcher thread ---------------------------------------------------
    def _main(self) -> None:
        core = self.core
        complete = False
        try:
            if self._owns_backend:
                self.backend.start()
            self._loop()
            # Not stopped: the input was read to its end (or failed)
            complete = not core.stopping and core.intake.error is None
        except BaseException as exc:  # a bug in conveyor, or a backend failure
            core.stop(exc)
            self._hand_over(force=True)
        finally:
            try:
                if core.intake.source is not None:
                    core.intake.source.close()
                self._drain()
            finally:
                if self._owns_backend:
                    self.backend.close(cancel=True)
                self._exit(complete)

    def _loop(self) -> None:
        core = self.core
        events = self.events
        handle = self._handle
        clock = core.clock
        last_news = clock.now()
        while True:
            core.step()
            if core.finished():
                self._hand_over(force=True)
                return
            now = clock.now()
            wake = core.wake_at(now)
            wake = self._hand_over_due(now, wake)
            if core.in_flight:
                # No completion for POLL_EVERY seconds (timers may have woken us
                # meanwhile): is work stranded, e.g. on a closed event loop?
                if now - last_news >= POLL_EVERY:
                    self.backend.poll()
                    last_news = now
                wake = min(wake, last_news + POLL_EVERY)
            wait = wake - clock.now()
            try:
                if wake == math.inf:
                    ev = events.get()
                else:
                    ev = events.get(timeout=wait) if wait > 0 else events.get(False)
            except Empty:
                continue
            if type(ev) is Completion:
                last_news = clock.now()
            handle(ev)
            while not events.empty():
                handle(events.get())

    def _drain(self) -> None:
        """Cancel what is in flight and wait for every batch to report."""
        core = self.core
        core.drain()
        clock = core.clock
        while core.in_flight:
            now = clock.now()
            wake = min(core.timers.expire_overdue(now, True), now + 1.0)
            try:
                ev = self.events.get(timeout=max(0.0, wake - clock.now()))
            except Empty:
                self.backend.poll()   # e.g. batches stranded on a closed event loop
                continue
            if type(ev) is Completion:
                core.completed(ev)

    def _handle(self, ev: Any) -> None:
        if type(ev) is Completion:
            self.core.completed(ev)
        elif ev is _STOP:
            self.core.stop()
        elif type(ev) is _Stop:
            self.core.stop(ev.error)
        # _INPUT and 0 need no handling: waking up makes the loop fill again.

def _yield_gil() -> None:
    time.sleep(0)
