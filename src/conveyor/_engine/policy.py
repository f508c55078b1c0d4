"""Policy: retries, the error policy, and what a failure carries.

A failure (an outcome listed in a completion's ``errors``) is retried while
its attempts last and it is one of ``retry_on``, and only if no failure to
raise comes before it (ordered: items before the raised one still count,
exactly like ``map()``); a retry waits its backoff in the :class:`RetryQueue`.
Otherwise it is final: annotated (index, attempts, backend), counted, and
treated as ``on_error`` says:

* ``"raise"``: the earliest such failure is raised once everything before it
  has been handed out; the rest of the run is cancelled;
* ``"skip"``: dropped from the results (counted in ``stats.skipped``);
* ``"return"``: the exception object stands in place of the result;
* ``"defer"`` (the executors' ``map``): a :class:`Raised` stands there, and
  the consumer raises it when it reaches it.

Outcomes are decided by position, so a task that *returns* an exception
object is never mistaken for one that raised it.

Re-runs are not retries. An item whose outcome was *lost* (its worker died
after running it, a dask result died with its worker, a dask task was
killed with the one that kills) did not fail: it runs again, counted in
``stats.rerun``, with no backoff and whatever ``retries`` says. Only
``LOST_TRIES`` times: an item lost once more fails with ``WorkerCrashed``
(:func:`lost_for_good`), which the error policy then treats as any failure
(retried if ``retries`` allow). The same rule holds on every backend, for
maps (the core) and single calls (``Pool.submit``).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import random
from typing import Any, NamedTuple

from .._backends._base import Batch
from .._progress import Counters
from ..errors import TaskTimeout, WorkerCrashed
from .clock import Clock
from .options import Options

__all__ = ["LOST_TRIES", "MAX_BACKOFF", "SKIP", "UNSET", "Policy", "Raised", "Retry",
           "RetryQueue", "Verdict", "add_note", "annotate", "backoff_delay", "lost_for_good"]

UNSET: Any = object()   # a group slot whose outcome is not final yet
SKIP: Any = object()    # a failure dropped by on_error="skip"

MAX_BACKOFF = 60.0

#: Times an item whose outcome was lost is run again (see the module docstring).
LOST_TRIES = 3


class Raised:
    """In place of a result, with ``on_error="defer"`` (the executors' ``map``):
    the exception to raise when the consumer reaches it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Retry(NamedTuple):
    """An item waiting to be run again."""

    due: float          # clock time when it may start
    tie: int            # first come, first served among equal due times
    group: Any          # the ordering group it belongs to
    pos: int            # its position in that group
    item: Any
    attempt: int        # the attempt it will be (1: the first retry)


class RetryQueue:
    """Items waiting out their backoff, earliest due first."""

    __slots__ = ("_heap", "_tie")

    def __init__(self) -> None:
        self._heap: list[Retry] = []
        self._tie = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, group: Any, pos: int, item: Any, attempt: int) -> None:
        heapq.heappush(self._heap, Retry(due, next(self._tie), group, pos, item, attempt))

    def next_due(self) -> float:
        """When the earliest retry is due (``inf``: none waits)."""
        return self._heap[0].due if self._heap else math.inf

    def pop_due(self, now: float) -> Retry | None:
        heap = self._heap
        if heap and heap[0].due <= now:
            return heapq.heappop(heap)
        return None

    def clear(self) -> None:
        self._heap.clear()

    def keep_before(self, index: float) -> None:
        """Drop the retries of items at input ``index`` or later (they will not be needed)."""
        self._heap[:] = [r for r in self._heap if r.group.base + r.pos < index]
        heapq.heapify(self._heap)


class Verdict(NamedTuple):
    """What :meth:`Policy.triage` decided for the failures of some outcomes."""

    retrying: int          # items queued to run again
    failures: int          # final failures
    special: bool          # a value was replaced by SKIP, or one will be raised
    fatal: int | None      # group position of the earliest failure to raise


class Policy:
    """Retries and the error policy of one run."""

    def __init__(self, options: Options, counters: Counters, backend: str,
                 clock: Clock) -> None:
        self.options = options
        self.counters = counters
        self.backend = backend
        self.clock = clock
        self.retries = RetryQueue()
        self.fatal_index: float = math.inf   # input index of the failure to raise

    def triage(self, b: Batch, offset: int, values: list[Any], errors: list[int],
               raised: list[int]) -> Verdict:
        """Decide the failures among ``values`` (outcomes of ``b.items[offset:]``).

        ``values`` is updated in place (UNSET for a retry, SKIP, ``Raised``);
        positions (in ``values``) of failures to raise are added to ``raised``.
        """
        opts = self.options
        counters = self.counters
        g = b.group
        retrying = failures = 0
        special = False
        fatal: int | None = None
        for p in errors:
            exc = values[p]
            index = g.base + b.start + offset + p
            if b.attempt < opts.retries and isinstance(exc, opts.retry_on) \
                    and index < self.fatal_index:
                self.retries.push(
                    self.clock.now() + backoff_delay(opts.backoff, b.attempt),
                    g, b.start + offset + p, b.items[offset + p], b.attempt + 1)
                values[p] = UNSET
                counters.retried += 1
                retrying += 1
                continue
            annotate(exc, index, self.backend, b.attempt)
            counters.failed += 1
            failures += 1
            if isinstance(exc, TaskTimeout):
                counters.timed_out += 1
            if opts.on_error == "defer":   # the executors' map: raised as it is consumed
                values[p] = Raised(exc)
            elif opts.on_error == "skip":
                values[p] = SKIP
                special = True
                counters.skipped += 1
            elif opts.on_error == "raise":
                raised.append(p)
                special = True
                pos = b.start + offset + p
                if fatal is None or pos < fatal:
                    fatal = pos
                self.fatal_index = min(self.fatal_index, index)
        return Verdict(retrying, failures, special, fatal)


def lost_for_good(times: int, cause: BaseException | None) -> WorkerCrashed:
    """The error of an item whose outcome has been lost ``times`` times, more
    than ``LOST_TRIES``: it is not run again."""
    error = WorkerCrashed(
        f"the outcome of this task was lost {times} times (a worker died after running "
        "it, or with its result, or a dask task beside it killed its worker): conveyor "
        f"ran it {times} times and gives up" + (f": {cause}" if cause is not None else ""))
    error.__cause__ = cause
    return error


def backoff_delay(backoff: float, attempt: int) -> float:
    """Seconds before retry ``attempt + 1``: exponential, jittered by +/-50%, capped."""
    delay: float = backoff * (2 ** attempt) * random.uniform(0.5, 1.5)
    return min(delay, MAX_BACKOFF)


def annotate(exc: BaseException, index: int, backend: str, attempt: int) -> None:
    with contextlib.suppress(Exception):  # a type with __slots__ or a strict __setattr__
        exc.__conveyor_index__ = index  # type: ignore[attr-defined]
    tries = f" (after {attempt + 1} attempts)" if attempt else ""
    add_note(exc, f"conveyor: raised by the task for item #{index}{tries} "
                   f"on the {backend} backend")


def add_note(exc: BaseException, note: str) -> None:
    # Some exception types refuse new attributes (frozen dataclasses, a strict
    # __setattr__): the note is a courtesy, never a reason to fail the run.
    with contextlib.suppress(Exception):
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list) and note in notes:
            return
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        else:  # Python 3.10: keep the text where 3.11+ would put it
            exc.__notes__ = [*(notes or []), note]  # type: ignore[attr-defined]
