"""The event-loop driver: the core on the event loop its backend's workers run on.

::

    caller's thread                         the event loop's thread
    Results ◀──outbox── ┌──────────── on the loop ───────────────┐
      took(n), stop ──▶ │ Core.step() once per burst (call_soon)  │──submit──▶ worker coroutines
      (call_soon_       │ next wake-up: loop.call_later           │◀─sink─── (a direct call:
       threadsafe)      └─────────────────────────────────────────┘           same thread)

For the asyncio backend on conveyor's shared loop (a sync ``conveyor.map`` of
a coroutine function, a ``Pool(backend="asyncio")``) and on the caller's loop
(``conveyor.amap`` of a coroutine function): the workers report on the loop,
so a completion is a direct call that queues it and, once per burst,
schedules one step of the core with ``call_soon``. There is no dispatcher
thread and no hop between threads per batch. The consumer's ``took`` and
``stop`` and the input's pump come from other threads: they wake the loop
with one ``call_soon_threadsafe``, and only when no step is pending.

The core's wake-up time is armed with ``call_later``, and re-armed only when
the core wants an earlier one (a timer that fires early just steps again).
If the loop has closed (the interpreter exits, or ``asyncio.run`` ended
under an ``amap``), whoever tries to wake it (the results' finaliser, at the
latest) runs what is left in its own thread: the backend reports the batches it
stranded as lost, and the run ends.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .._backends._base import Backend, Completion, wait_event
from .._batching import Memory
from .._source import Source
from .core import Core
from .facade import Run
from .options import Options

__all__ = ["LoopRun"]


class LoopRun(Run):
    """One map whose core runs on ``loop``, the thread its backend reports on."""

    def __init__(self, fn: Callable[[Any], Any], items: Iterator[Any] | Source,
                 total: int | None, backend: Backend, loop: asyncio.AbstractEventLoop, *,
                 owns_backend: bool, options: Options, memory: Memory | None = None) -> None:
        self._reports: collections.deque[Completion] = collections.deque()
        core = Core(fn, items, total, backend, options, sink=self._report, memory=memory)
        super().__init__(core, total, options)
        self._loop = loop
        self._owns_backend = owns_backend
        self._loop_thread: int | None = None   # the loop's thread, once it runs us
        self._scheduled = False     # a step is due on the loop
        self._stops: collections.deque[BaseException | None] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._done = threading.Event()
        self._orphan_lock = threading.Lock()
        self._orphaned = False      # the loop closed: steps run in the caller's thread
        self._ending = False

    # -- consumer-side API -------------------------------------------------------
    def start(self) -> None:
        self._scheduled = True
        self._call_threadsafe(self._begin)

    def took(self, n: int) -> None:
        if self._window.took(n):
            self._kick()

    def stop(self, error: BaseException | None = None) -> None:
        if self._done.is_set():
            return
        self._stops.append(error)
        self._kick()

    def close(self, *, wait: bool = True, error: BaseException | None = None) -> None:
        self.stop(error)
        if wait:
            self.wait_finished()

    def wait_finished(self) -> None:
        # On the loop itself the end cannot be waited for (it needs the loop):
        # the callers there await on_exit instead.
        if threading.get_ident() != self._loop_thread:
            wait_event(self._done)   # in slices: Ctrl-C must land

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    # -- waking the loop ---------------------------------------------------------
    def _report(self, c: Completion) -> None:
        """``batch.sink``: on the loop (or, once it closed, anywhere)."""
        self._reports.append(c)
        if not self._scheduled and not self._orphaned:   # orphaned: the step runs on
            self._scheduled = True
            if threading.get_ident() == self._loop_thread:
                self._loop.call_soon(self._step)
            else:
                self._call_threadsafe(self._step)

    def _kick(self) -> None:
        """From any thread: make sure a step comes (one wake-up per burst)."""
        if self._scheduled or self._orphaned:
            return
        self._scheduled = True
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._step)
        else:
            self._call_threadsafe(self._step)

    def _call_threadsafe(self, fn: Callable[[], None]) -> None:
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:   # the loop is closed: nobody else will run the rest
            self._orphan()

    def _orphan(self) -> None:
        with self._orphan_lock:
            if self._done.is_set():
                return
            self._orphaned = True
            self.backend.poll()    # the batches the closed loop stranded: reported lost
            self._step()
            while self._reports and not self._done.is_set():
                self._step()

    # -- on the loop ---------------------------------------------------------------
    def _begin(self) -> None:
        self._loop_thread = threading.get_ident()
        source = self.core.intake.source
        if source is not None:
            source.start(self._kick)
        self._step()

    def _step(self) -> None:
        self._scheduled = False
        if self._ending:
            return
        core = self.core
        try:
            reports = self._reports
            completed = core.completed
            while reports:
                completed(reports.popleft())
            stops = self._stops
            while stops:
                core.stop(stops.popleft())
            core.step()
            if core.finished():
                self._finish()
                return
            self._plan()
        except BaseException as exc:  # a bug in conveyor, or a backend failure
            core.stop(exc)
            self._hand_over(force=True)
            if core.finished():
                self._finish()
            else:
                self._plan()
            if not isinstance(exc, Exception):
                raise   # Ctrl-C on the caller's loop: the loop's own handling goes on

    def _plan(self) -> None:
        """Hand results over, and arm the timer for the core's next wake-up."""
        core = self.core
        now = core.clock.now()
        wake = core.wake_at(now)
        wake = self._hand_over_due(now, wake)
        if wake < self._timer_at and not self._orphaned:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = wake
            self._timer = self._loop.call_later(max(0.0, wake - now), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        if not self._scheduled:
            self._step()

    def _finish(self) -> None:
        if self._ending:
            return
        self._ending = True
        core = self.core
        complete = not core.stopping and core.intake.error is None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._hand_over(force=True)
        try:
            if core.intake.source is not None:
                core.intake.source.close()
            if self._owns_backend:
                # On the loop: stops the idle workers without waiting for them
                # (every batch of this run has reported: none runs its items).
                self.backend.close(cancel=True)
        finally:
            self._exit(complete)
            self._done.set()
