"""What ``Results``, ``Pool`` and pipelines see of a run, whichever driver runs it.

A driver owns a :class:`~conveyor._engine.core.Core` and the outbox the
consumer reads. The consumer calls ``took`` (window room), ``stop`` /
``close`` (from any thread) and reads ``stats``; the driver calls
``_hand_over`` to move what the core handed out into the outbox, and
``_exit`` once the run is over.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from .._outbox import Outbox
from .._progress import ProgressBar, Stats
from .._source import CHUNK_POLL
from .core import Core
from .options import Options

__all__ = ["FLUSH_EVERY", "Run"]

FLUSH_EVERY = 0.001     # seconds: most often results are handed over while busy


class Run(ABC):
    """One map, as its consumer sees it."""

    def __init__(self, core: Core, total: int | None, options: Options) -> None:
        self.core = core
        self.backend = core.backend
        self.outbox = Outbox()
        self.keep: object = None        # what must live as long as the run (its Pool)
        self._window = core.intake.window
        self._last_flush = 0.0
        self._end_sent = False
        self._bar: ProgressBar | None = None
        if options.progress:
            self._bar = ProgressBar(core.counters, total, options.desc,
                                    dict(options.progress_options))
        self._exit_callbacks: list[Callable[[], None]] = []
        self._exit_lock = threading.Lock()
        self._exited = False

    @abstractmethod
    def start(self) -> None:
        """Start the run (non-blocking)."""

    @abstractmethod
    def took(self, n: int) -> None:
        """The consumer took ``n`` items from the outbox: free window space."""

    @abstractmethod
    def stop(self, error: BaseException | None = None) -> None:
        """Ask the driver to cancel the run (non-blocking, idempotent, any thread).

        ``error``, if given, is raised in the consumer in place of the results
        not produced (e.g. ``PoolClosed`` when the pool is closed under it).
        """

    @abstractmethod
    def close(self, *, wait: bool = True, error: BaseException | None = None) -> None:
        """``stop``, then (``wait``) wait until the run has ended."""

    @abstractmethod
    def wait_finished(self) -> None:
        """Wait (interruptibly) until the run has ended."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """The run has ended: its counters are final."""

    def stats(self) -> Stats:
        return self.core.stats()

    @property
    def total(self) -> int | None:
        """The input's length, where it has one."""
        return self.core.intake.total

    def cancel_batches(self) -> None:
        """From any thread: mark the batches in flight cancelled, so that a worker
        taking one now drops it (``stop`` then cancels them properly)."""
        for b in list(self.core.in_flight):   # one C-level copy: safe while the driver runs
            b.cancelled = True

    def on_exit(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` (in the driver's thread) when the run ends; False if it has."""
        with self._exit_lock:
            if self._exited:
                return False
            self._exit_callbacks.append(callback)
            return True

    def _hand_over(self, *, force: bool = False) -> None:
        """Hand the pending chunks to the consumer in one entry (one wake-up), and
        (``force``) then the end, once it is known."""
        core = self.core
        if core.ordering.out:
            self._last_flush = core.clock.now()
            chunks = core.ordering.take()
            self.outbox.put(chunks[0] if len(chunks) == 1 else tuple(chunks))
        end = core.end
        if force and end is not None and not self._end_sent:
            self._end_sent = True
            self.outbox.put(end)

    def _hand_over_due(self, now: float, wake: float) -> float:
        """Hand over what is due (the end at once); returns ``wake``, or earlier if
        results wait to be handed over or the input's pump is reading a chunk."""
        core = self.core
        if core.end is not None:
            self._hand_over(force=True)
        elif core.ordering.out:
            # Hand results over at most every FLUSH_EVERY seconds while more
            # are coming: each hand-over wakes the consumer's thread, and under
            # a burst of completions those wake-ups would take the GIL from the
            # workers. An idle run hands over at once.
            due = self._last_flush + FLUSH_EVERY
            if due <= now or not core.in_flight:
                self._hand_over()
            else:
                wake = min(wake, due)
        src = core.intake.source
        if src is not None and src.chunk > 1:
            wake = min(wake, now + CHUNK_POLL)   # the pump reads a chunk: look meanwhile
        return wake

    def _exit(self, complete: bool) -> None:
        """The run is over (the backend is closed, if the run owned it)."""
        core = self.core
        core.counters.ended = time.perf_counter()
        if self._bar is not None:
            self._bar.close(complete=complete)
        core.stop()
        self._hand_over(force=True)
        with self._exit_lock:
            self._exited = True
            callbacks = self._exit_callbacks[:]
        for cb in callbacks:
            cb()
