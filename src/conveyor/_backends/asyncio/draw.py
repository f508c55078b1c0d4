"""What the asyncio backend keeps per batch and per worker coroutine.

A batch on the loop is drawn one item at a time by any free worker (several
at once), so its outcomes finish out of order. They collect in *runs* of
consecutive positions, which the backend reports once per burst of the loop
(``Completion.more``); the batch ends with a completion without ``more`` once
nothing of it runs and nothing is left to draw. The cancel helpers below keep
a worker's own ``task.cancel()`` calls apart from anyone else's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from .._base import Batch

__all__ = ["Draw", "Worker", "cancel_once", "outcome", "swallowed"]


class Worker:
    __slots__ = ("batch", "cancelling", "cancels", "current", "expired", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.batch: Batch | None = None     # the batch of the item it runs
        self.current: tuple[Batch, int, float] | None = None
        self.expired: BaseException | None = None
        self.cancelling = False     # its item's batch is cancelled
        self.cancels = 0            # task.cancel() calls made and not yet handled


class Draw(Iterator[Any]):
    """``batch.it`` of a batch on the loop: its items as the workers draw them
    (one at a time, several workers at once) and the outcomes not reported yet.

    Outcomes collect in *runs* of consecutive positions; each burst of the
    loop reports the runs finished in it (``Completion.more``), and the last
    report, once no item is running and none is left to draw, ends the batch.
    """

    __slots__ = ("batch", "busy", "dirty", "end", "errs", "finished", "run", "run_at",
                 "running", "runs", "taken", "unfinished")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.taken = 0          # items drawn: positions below this started
        self.end = batch.limit  # draw up to here (lowered by a cancel)
        self.running = 0        # drawn and not finished
        self.unfinished = 0     # drawn, and ended without an outcome
        self.busy = 0.0         # seconds the workers spent on its items
        self.run_at = 0         # the position of run[0]
        self.run: list[Any] = []    # outcomes from run_at on, not reported yet
        self.errs: list[int] = []   # the positions in `run` that are exceptions
        self.runs: list[tuple[int, list[Any], list[int]]] = []   # earlier runs, unreported
        self.dirty = False      # queued for the next report
        self.finished = False   # its last completion was reported

    def __next__(self) -> Any:
        raise StopIteration     # drawn by the backend's workers only

    def __length_hint__(self) -> int:
        return max(0, self.end - self.taken)

    def finish(self) -> None:
        """Its last completion is being reported."""
        self.finished = True
        # batch.it -> draw -> batch is a cycle: left to the garbage collector,
        # finished batches (their items and outcomes) would pile up in its
        # oldest generation, and a long map's memory would grow with its length.
        self.batch.it = None

    @property
    def over(self) -> bool:
        """Nothing runs and nothing is left to draw."""
        return self.running == 0 and self.taken >= self.end


def outcome(w: Worker, exc: BaseException, closing: bool) -> tuple[Any, bool | None]:
    """The outcome of an item that raised ``exc``: ``(value, failed)``, with
    ``failed=None`` if the item did not finish (its batch was cancelled).
    Raises to make the worker leave (the backend is ``closing``, the loop shuts down)."""
    if isinstance(exc, GeneratorExit):
        raise exc   # the worker coroutine itself is being closed (collected): leave
    if not isinstance(exc, asyncio.CancelledError):
        return exc, True   # the task's own failure
    # Our own cancel() calls (an expiry, a cancelled batch; at most one is
    # issued at a time) are handled here.
    task = w.task
    ours = w.cancels
    forget_cancels(w, task)
    if ours and still_cancelled(task):
        # Someone else cancelled too (the loop is shutting down): both
        # requests arrived as this one CancelledError.
        raise exc
    if w.cancelling and not closing:
        w.cancelling = False
        w.expired = None
        return None, None   # its batch was cancelled, not the worker
    if w.expired is not None:
        error, w.expired = w.expired, None
        return error, True
    if closing or (not ours and was_cancelled(task)):
        raise exc   # the backend closes, or the loop is shutting down
    # Nobody cancelled us: the coroutine raised CancelledError itself, a
    # failure like any other.
    return exc, True

def swallowed(w: Worker, value: Any, failed: bool | None) -> tuple[Any, bool | None]:
    """We cancelled the item, and its coroutine returned anyway."""
    forget_cancels(w, w.task)
    if w.expired is not None:
        value, failed = w.expired, True
    w.expired = None
    w.cancelling = False   # the item finished: its outcome counts
    return value, failed


def cancel_once(w: Worker) -> None:
    if w.cancels == 0 and w.task is not None:
        w.cancels = 1
        w.task.cancel()


def forget_cancels(w: Worker, task: asyncio.Task[Any] | None) -> None:
    for _ in range(w.cancels):
        uncancel(task)
    w.cancels = 0


def still_cancelled(task: asyncio.Task[Any] | None) -> bool:
    """After forgetting our own cancel() calls: is a cancellation still requested?

    Python 3.11+ counts the requests; 3.10 cannot tell, and we assume not (so
    on 3.10 a loop shutdown that lands together with an expiry is missed and
    the worker carries on: a documented limitation).
    """
    cancelling = getattr(task, "cancelling", None)
    return cancelling is not None and bool(cancelling())


def was_cancelled(task: asyncio.Task[Any] | None) -> bool:
    """Did someone call ``task.cancel()``? (Python 3.11+ can tell; 3.10: assume so.)"""
    if task is None:
        return False
    cancelling = getattr(task, "cancelling", None)
    return True if cancelling is None else bool(cancelling())


def uncancel(task: asyncio.Task[Any] | None) -> None:
    # Python 3.11+: forget a cancellation we handled, so that the user's own
    # asyncio.timeout() blocks in later items keep working.
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()
