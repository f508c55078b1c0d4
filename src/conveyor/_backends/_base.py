"""The backend protocol: how the scheduler hands work to a pool of workers.

A backend is *mechanism only*: it runs a batch's items through a function and
reports what happened. Everything that is policy (ordering, the window,
retries, the error policy, timeouts' deadlines, rate, progress, stats) lives
once, in the engine (``conveyor._engine``).

The unit of work is a :class:`Batch`: a function and a list of items. The
backend reports a :class:`Completion` through ``batch.sink`` (a thread-safe
callable supplied by whoever submitted the batch). A completion covers a
*prefix* of the batch's items: ``values[i]`` is the outcome of
``batch.items[i]`` for ``i < len(values)``; outcomes listed in ``errors`` are
exception objects. Items beyond the prefix did not run, and the scheduler
submits them again. That single rule covers every way a batch can end early:

* the scheduler *stole* the unstarted tail of a long batch (:meth:`steal`),
* a task overran its timeout and the worker was abandoned or killed
  (:meth:`expire`: the prefix ends with the ``TaskTimeout``),
* a worker process died (the prefix ends with ``WorkerCrashed``; the outcomes
  of the items before it died with the worker, and ``rerun`` says so),
* a dask task's result died with its worker, or the task killed its workers
  (``rerun`` covers its items; ``split`` asks for them one by one),
* the batch was cancelled (:meth:`cancel`: usually an empty prefix).

A backend whose workers share batches (``shares_batches``: asyncio's draw
the items of one batch one by one, several at once) reports a batch in
pieces instead: completions with ``more`` carry runs of outcomes at
``offset`` while the batch runs, in any order, and the last one (without
``more``) ends the batch, where items from its end on did not run.

A worker that shares its outcome list as ``batch.out`` (threads, asyncio)
also lets the scheduler :meth:`harvest` the outcomes of a long batch before it
ends.

Per-item timeouts and crash attribution need to know which item each worker
is running and since when: workers record it for batches with ``timed=True``
and :meth:`running` reports it, so the scheduler can compute deadlines without
a message per item.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from .._worker import Apply, Star
from ._capabilities import Capabilities

if TYPE_CHECKING:
    import asyncio

__all__ = ["Backend", "Batch", "Completion", "Running", "begin", "dropped", "init_failure",
           "initializer_failed", "join", "running_items", "settle_unrunnable",
           "take_unstarted", "underlying", "wait_event"]


class Batch:
    """A function and a list of items to run through it, on one worker."""

    __slots__ = (
        "attempt", "cancelled", "errs", "fn", "group", "harvested", "it", "items", "limit",
        "on_start", "out", "owner", "sink", "start", "started", "timed",
    )

    def __init__(self, fn: Callable[[Any], Any], items: list[Any],
                 sink: Callable[[Completion], None], *, owner: object = None,
                 group: Any = None, start: int = 0, attempt: int = 0,
                 timed: bool = False) -> None:
        self.fn = fn
        self.items = items
        self.sink = sink
        self.owner = owner          # the run (or pool) that submitted it
        self.group = group          # scheduler's bookkeeping: which ordering group
        self.start = start          # position of items[0] within that group
        self.attempt = attempt      # 0 for a first try, n for the n-th retry
        self.timed = timed          # workers record (item, start time) per item
        self.limit = len(items)     # lowered when the scheduler steals the tail
        self.cancelled = False
        self.it: Iterator[Any] | None = None  # set by the worker that runs it
        self.started = 0.0          # time.monotonic() when a worker took it
        # Shared with the worker while it runs (backends that can harvest):
        self.out: list[Any] | None = None     # outcomes so far, in order
        self.errs: list[int] | None = None    # positions in `out` that are errors
        self.harvested = 0          # outcomes the scheduler has already taken
        #: Called by the worker as it takes the batch; False means "don't run it"
        #: (Pool.submit: Future.set_running_or_notify_cancel).
        self.on_start: Callable[[], bool] | None = None

    def __repr__(self) -> str:
        return f"<Batch of {len(self.items)} at {self.start} attempt={self.attempt}>"


class Completion:
    """What a worker reports for a batch: outcomes of a prefix of its items.

    A backend only says what happened; the scheduler decides what runs
    again. ``rerun=(a, z)``: items ``a`` to ``z - 1`` ran, but their outcomes
    were lost (``values[a:z]`` are placeholders), with a worker that died or
    a result that died with its worker: the scheduler runs them again, a few
    times at most (``_engine.policy.LOST_TRIES``), then fails them with
    ``WorkerCrashed`` (``cause`` as its cause). ``split``: what runs again
    (those items, and the tail beyond ``values``) goes one item per batch,
    to find the one that kills its worker, or because the items cannot
    travel together.
    """

    __slots__ = ("batch", "busy", "cause", "errors", "lost", "more", "offset", "rerun", "split",
                 "values")

    def __init__(self, batch: Batch, values: list[Any], errors: list[int] | None,
                 busy: float, *, lost: bool = False,
                 rerun: tuple[int, int] | None = None, split: bool = False,
                 cause: BaseException | None = None, offset: int = 0,
                 more: bool = False) -> None:
        self.batch = batch
        self.values = values        # outcome of batch.items[offset + i]
        self.errors = errors        # positions in values that are exceptions
        #: Where ``values`` start. Outcomes before ``offset`` were reported by
        #: earlier completions of the batch (``more``) or are not to be recorded.
        self.offset = offset
        #: A report of some outcomes while the batch still runs: more follow,
        #: and the batch ends only with a completion without ``more``.
        self.more = more
        self.busy = busy            # seconds the worker spent on it
        self.lost = lost            # dropped because the backend shut down
        self.rerun = rerun          # (a, z): items that ran, their outcomes lost
        self.split = split          # run again one item per batch
        self.cause = cause          # how the outcomes were lost, if the backend knows


class Running:
    """One worker busy on one item of a timed batch (see ``Backend.running``)."""

    __slots__ = ("batch", "pos", "since")

    def __init__(self, batch: Batch, pos: int, since: float) -> None:
        self.batch = batch
        self.pos = pos
        self.since = since          # time.monotonic() when the item started


class Backend(Capabilities, ABC):
    """Runs batches on a set of workers. Subclasses hold mechanism only; what they
    can do is declared on the class (see ``_capabilities.Capabilities``)."""

    name: ClassVar[str]
    #: True if :meth:`steal` can take back the unstarted tail of a running batch.
    can_steal: ClassVar[bool] = False
    #: True if the items of one batch run on several workers at once (each free
    #: worker draws the next item): batches are then no worker's queue, and a
    #: batch reports its outcomes in runs as they finish (``Completion.more``).
    shares_batches: ClassVar[bool] = False
    #: Default target duration of one batch, for adaptive batching (seconds).
    batch_target: ClassVar[float] = 0.002
    #: Largest batch adaptive batching may form.
    max_batch: ClassVar[int] = 4096
    #: True if :meth:`running` can say which item of a batch runs: else batches
    #: of runs with ``timeout=`` hold one item each.
    times_items: ClassVar[bool] = True
    #: Most batches in flight per worker (None: as many as the window allows).
    #: Where a batch's round trip is long (dask), the ones submitted early, at
    #: the small sizes adaptive batching starts with, would otherwise fill the
    #: whole window and set the run's pace.
    batches_per_worker: ClassVar[int | None] = None
    #: True if every completion may be reported on one event loop's thread
    #: (:meth:`event_loop`): the run's core can then run on that loop.
    loop_driven: ClassVar[bool] = False

    workers: int

    @abstractmethod
    def start(self) -> None:
        """Make the backend ready to accept batches (workers may start lazily)."""

    def warm_up(self) -> None:
        """Start every worker now (``Pool``); by default workers start lazily."""
        return

    def prepare(self, fn: Callable[[Any], Any], where: str) -> None:
        """Check, before any work starts, that ``fn`` can be run by the workers.

        Backends whose workers are other processes pickle it here (once per
        function) and raise ``NotPicklable`` (a ``TypeError``) naming what
        cannot be sent. ``where`` prefixes the message (``"conveyor.map"``).
        """
        return

    @abstractmethod
    def submit(self, batch: Batch) -> None:
        """Queue ``batch``; its completion is reported through ``batch.sink``.

        Thread-safe and non-blocking. Exactly one completion is reported for
        every submitted batch, whatever happens to it.
        """

    def running(self) -> list[Running]:
        """The item each worker is running, for batches submitted with ``timed``."""
        return []

    def expire(self, entry: Running, error: BaseException) -> bool:
        """Stop the item ``entry`` describes, failing it with ``error``.

        The backend reports a completion whose prefix ends with ``error`` at
        ``entry.pos`` (unless the item finished first: then it returns False
        and nothing changes). The worker is killed, cancelled or abandoned as
        the mechanism allows, and replaced.
        """
        return False

    def steal(self, batch: Batch) -> int | None:
        """Take back the items of a running batch that have not started.

        Returns the position of the first item taken (the worker's completion
        will cover only the items before it), or None if nothing was taken.
        """
        return None

    def harvest(self, batch: Batch) -> tuple[list[Any], list[int]] | None:
        """The outcomes of a running batch finished since the last harvest.

        Returns ``(values, errors)`` for positions ``batch.harvested`` up to the
        worker's progress (``errors`` as positions in the batch), or None.
        The final completion still covers the whole prefix; the scheduler
        skips what it harvested. Lets a batch stuck on one slow item deliver
        the results of the items before it.
        """
        out, errs = batch.out, batch.errs
        if out is None:
            return None
        start = batch.harvested
        end = len(out)   # errs gets a position before out gets the exception
        if end <= start:
            return None
        values = out[start:end]
        errors = [p for p in errs if start <= p < end] if errs else []
        return values, errors

    def event_loop(self) -> asyncio.AbstractEventLoop | None:
        """Once started: the loop whose thread runs the workers and reports every
        completion, if the run's core may run there too (the event-loop driver);
        None: the run needs a dispatcher thread of its own."""
        return None

    def poll(self) -> None:
        """Report (as lost) batches that can no longer run, e.g. because the
        event loop they were given to has closed. Called by a scheduler that
        has been waiting a while for completions. Most backends have nothing
        to do here."""
        return

    @abstractmethod
    def cancel(self, batch: Batch) -> None:
        """Best effort: run as little more of ``batch`` as possible.

        A queued batch is dropped (reported with an empty prefix); a running
        one stops at its next item, or at once where the mechanism allows.
        """

    @abstractmethod
    def close(self, *, cancel: bool, wait: bool = True) -> None:
        """Stop the workers.

        ``cancel=False`` lets queued batches finish first; ``cancel=True``
        drops them and stops what can be stopped. ``wait=True`` returns only
        once every worker has ended (a thread stuck in a call it cannot leave
        is the documented exception for ``wait=False``).
        """


def underlying(fn: object) -> Any:
    """The user's function inside conveyor's call wrappers (``Apply``, ``Star``)."""
    return fn.fn if isinstance(fn, (Apply, Star)) else fn


#: Seconds per slice of a wait that must stay interruptible (see ``join``).
WAIT_SLICE = 0.1


def join(thread: threading.Thread) -> None:
    """``thread.join()`` in short slices.

    A wait with no timeout in the main thread may never see Ctrl-C: the signal
    can be delivered to another thread, and the main thread, blocked in the
    lock, never runs the handler. Every wait the caller's thread may do is
    therefore sliced, as the results' hand-over is.
    """
    while thread.is_alive():
        thread.join(WAIT_SLICE)


def wait_event(event: threading.Event) -> None:
    """``event.wait()`` in short slices (see ``join``)."""
    while not event.wait(WAIT_SLICE):
        pass


def dropped(batch: Batch) -> Completion:
    """The completion of a batch the backend drops because it is shutting down."""
    batch.cancelled = True
    return Completion(batch, [], None, 0.0, lost=True)


# -- helpers shared by the backends' workers ----------------------------------

def settle_unrunnable(batch: Batch, init_error: BaseException | None) -> bool:
    """A worker's check as it takes ``batch``: report it at once if it must not run.

    A cancelled batch (or a ``Pool.submit`` future cancelled before it started)
    is reported with an empty prefix; on a worker whose initializer failed,
    every item fails with its own ``WorkerInitError``. Returns True if reported.
    """
    on_start = batch.on_start
    if batch.cancelled or (on_start is not None and not on_start()):
        batch.sink(Completion(batch, [], None, 0.0))
        return True
    if init_error is not None:
        n = batch.limit
        batch.sink(Completion(batch, [init_failure(init_error) for _ in range(n)],
                              list(range(n)), 0.0))
        return True
    return False


def begin(batch: Batch) -> tuple[float, list[Any], list[int], Iterator[Any]]:
    """Start running ``batch``: its outcome lists and shared item iterator.

    ``batch.out`` / ``batch.errs`` let the scheduler harvest finished outcomes;
    ``batch.it`` is shared so that it can take back the unstarted tail.
    """
    t0 = time.monotonic()
    batch.started = t0
    out: list[Any] = []
    errors: list[int] = []
    batch.out, batch.errs = out, errors
    it = batch.it = iter(batch.items)
    return t0, out, errors, it


def take_unstarted(batch: Batch) -> int | None:
    """``Backend.steal`` for workers that pull items from the shared ``batch.it``."""
    it = batch.it
    if it is None:
        return None
    rest = list(it)   # one C-level call: atomic with respect to the worker pulling from it
    if not rest:
        return None
    return batch.limit - len(rest)


def running_items(workers: Iterable[Any]) -> list[Running]:
    """``Backend.running`` from workers that keep ``current = (batch, pos, since)``."""
    out = []
    for w in list(workers):
        cur = w.current
        if cur is not None:
            out.append(Running(cur[0], cur[1], cur[2]))
    return out


def initializer_failed(initializer: object, exc: BaseException) -> BaseException:
    """The error a worker whose ``initializer`` raised ``exc`` gives its tasks."""
    from ..errors import WorkerInitError

    error = WorkerInitError(f"the pool's initializer {initializer!r} raised {exc!r}")
    error.__cause__ = exc
    return error


def init_failure(error: BaseException) -> BaseException:
    """A fresh ``WorkerInitError`` per item (each gets its own index and notes)."""
    from ..errors import WorkerInitError

    exc = WorkerInitError(str(error))
    exc.__cause__ = error.__cause__
    return exc
