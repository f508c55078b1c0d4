"""backend="thread": worker threads pulling batches from one queue.

::

    scheduler --submit--> SimpleQueue[Batch] --get--> worker thread 1..N
                                                       | for x in it: append(fn(x))
    scheduler <--batch.sink(Completion)----------------+

Mechanism only. A worker runs a batch through a *shared* iterator over its
items (``batch.it``), so the scheduler can take back the unstarted tail of a
long batch with one C-level ``list(batch.it)`` while the worker is busy
(:meth:`ThreadBackend.steal`): a slow item never holds the items queued behind
it hostage. The fast path per item is a call and an append (the ``try``
costs nothing until something raises); outcomes go to ``batch.out``, which
the scheduler may read (harvest) while the batch runs.

Timed batches (``timeout=``) take a slower path that records, under a
per-worker lock, which item is running and since when. A thread cannot be
interrupted, so an expired item is *abandoned*: the worker is marked, a
replacement thread starts at once, and the old thread exits as soon as the
call returns, its result discarded.

What one worker thread does -- set up, run batches, tear down -- is a
:class:`WorkerContext`, as in CPython's ``concurrent.futures.thread`` (whose
``WorkerContext`` its ``InterpreterPoolExecutor`` subclasses): a variant of
this backend (a sub-interpreter per worker, settings of a free-threaded
build) is a subclass of it, named by a ``ThreadBackend`` subclass's
``context``, and keeps this file's queue, growth, timeouts and stealing.

Threads start lazily (another one whenever a batch is left waiting in the
queue, up to ``workers``) and are daemon threads, so an abandoned call can never keep
the interpreter from exiting; :meth:`close` joins every thread that is not
abandoned.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, ClassVar

from .._worker import set_thread_state
from ._base import (
    Backend,
    Batch,
    Completion,
    Running,
    begin,
    dropped,
    initializer_failed,
    join,
    running_items,
    settle_unrunnable,
    take_unstarted,
)

__all__ = ["ThreadBackend", "WorkerContext"]

_counter = itertools.count(1)


class _Worker:
    __slots__ = ("abandoned", "current", "errors", "lock", "out", "thread")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.current: tuple[Batch, int, float] | None = None
        self.out: list[Any] = []
        self.errors: list[int] = []
        self.thread: threading.Thread | None = None

    def gone(self) -> bool:
        return self.abandoned


class WorkerContext:
    """One worker thread's life: :meth:`initialize`, batches, :meth:`finalize`.

    Made in the worker thread, one per thread. Override to change what a
    worker is: :meth:`run` and :meth:`run_timed` run one batch and return its
    completion (the prefix rule of ``_base``), :meth:`finalize` releases what
    :meth:`initialize` made.
    """

    def __init__(self, initializer: Callable[..., object] | None,
                 initargs: tuple[Any, ...]) -> None:
        self.initializer = initializer
        self.initargs = initargs

    def initialize(self) -> None:
        """Before the first batch; what it raises fails every task of this worker
        (``WorkerInitError``)."""
        set_thread_state()   # conveyor.worker_state(): this thread's own dict
        if self.initializer is not None:
            self.initializer(*self.initargs)

    def run(self, batch: Batch) -> Completion:
        """Run ``batch`` (not timed): the fast path, a call and an append per item."""
        return _run(batch)

    def run_timed(self, batch: Batch, worker: _Worker) -> Completion | None:
        """Run a batch of a run with ``timeout=``, recording in ``worker`` which item
        runs since when; None if the worker was abandoned (``expire`` reported it)."""
        return _run_timed(batch, worker)

    def finalize(self) -> None:
        """After the last batch, in the worker thread (also after an abandoned call
        returns, or a failed :meth:`initialize`)."""
        return


class ThreadBackend(Backend):
    name = "thread"
    options = Backend.options | {"thread_name_prefix"}
    #: What each worker thread is (see :class:`WorkerContext`).
    context: ClassVar[type[WorkerContext]] = WorkerContext
    can_steal = True
    batch_target = 0.002
    max_batch = 4096

    def __init__(self, workers: int, *, initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = (), thread_name_prefix: str = "") -> None:
        self.workers = workers
        self._initializer = initializer
        self._initargs = initargs
        self._queue: SimpleQueue[Batch | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._live: list[_Worker] = []          # not abandoned, not exited
        # One entry per thread waiting for a batch: list.append and list.pop
        # are atomic, so this count costs two C calls per batch (no lock).
        self._idle: list[None] = []
        self._closed = False
        self._prefix = thread_name_prefix or f"conveyor-thread-{next(_counter)}"
        self._sep = "_" if thread_name_prefix else "-"   # the stdlib names them prefix_N
        self._n = itertools.count(1)

    # -- protocol ------------------------------------------------------------
    def start(self) -> None:
        pass

    def submit(self, batch: Batch) -> None:
        if self._closed:
            batch.sink(dropped(batch))
            return
        queue = self._queue
        queue.put(batch)
        # Start another thread when more batches wait than threads are idle,
        # up to `workers`. A thread counts as idle from just before it waits
        # for a batch until just after it has one: in that moment the count
        # is one too high, so each thread looks again once it has its batch
        # (see _work). Whoever looks last sees the true count.
        self._grow()

    def _grow(self) -> None:
        """Another thread if more batches wait than threads are idle (up to ``workers``)."""
        if len(self._live) < self.workers and self._queue.qsize() > len(self._idle):
            with self._lock:
                if len(self._live) < self.workers and not self._closed:
                    self._spawn()

    def running(self) -> list[Running]:
        return running_items(self._live)

    def expire(self, entry: Running, error: BaseException) -> bool:
        for w in list(self._live):
            with w.lock:
                cur = w.current
                if cur is None or cur[0] is not entry.batch or cur[1] != entry.pos:
                    continue
                w.abandoned = True
                values = [*w.out[:entry.pos], error]
                errors = [*w.errors, entry.pos]
                busy = time.monotonic() - entry.batch.started
            with self._lock:
                if w in self._live:
                    self._live.remove(w)
                if not self._closed:
                    self._spawn()
            entry.batch.sink(Completion(entry.batch, values, errors, busy))
            return True
        return False

    def steal(self, batch: Batch) -> int | None:
        return take_unstarted(batch)

    def cancel(self, batch: Batch) -> None:
        batch.cancelled = True
        if batch.it is not None:
            self.steal(batch)

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        with self._lock:
            if self._closed:
                workers = list(self._live)
            else:
                self._closed = True
                workers = list(self._live)
                if cancel:
                    self._drain()
                for _ in workers:
                    self._queue.put(None)
        if wait:
            me = threading.current_thread()
            for w in workers:
                if w.thread is not None and w.thread is not me:
                    join(w.thread)

    # -- internals -----------------------------------------------------------
    def _drain(self) -> None:
        while not self._queue.empty():
            b = self._queue.get()
            if b is not None:
                b.sink(dropped(b))

    def _spawn(self) -> None:
        w = _Worker()
        t = threading.Thread(target=self._work, args=(w,), daemon=True,
                             name=f"{self._prefix}{self._sep}{next(self._n)}")
        w.thread = t
        self._live.append(w)
        t.start()

    def _work(self, w: _Worker) -> None:
        ctx = self.context(self._initializer, self._initargs)
        init_error: BaseException | None = None
        try:
            ctx.initialize()
        except BaseException as exc:
            init_error = initializer_failed(self._initializer, exc)
        queue = self._queue
        get = queue.get
        idle = self._idle
        try:
            while True:
                idle.append(None)
                batch = get()
                idle.pop()
                if batch is not None and queue.qsize():
                    self._grow()   # a submit may have counted this thread idle
                if batch is None:
                    return
                if not settle_unrunnable(batch, init_error):
                    done = ctx.run_timed(batch, w) if batch.timed else ctx.run(batch)
                    if done is None:
                        return  # abandoned: expire() reported and replaced us
                    batch.sink(done)
                    done = None
                if w.abandoned:
                    return
                # Hold nothing while idle: a batch keeps its items and results
                # alive (up to thousands of objects per worker otherwise).
                batch = None
        finally:
            with self._lock:
                if w in self._live:
                    self._live.remove(w)
            ctx.finalize()


def _run(batch: Batch) -> Completion:
    fn = batch.fn
    t0, out, errors, it = begin(batch)
    append = out.append
    # Not out.extend(map(fn, it)): a StopIteration raised by fn would end
    # extend() as if the batch were exhausted, losing the item silently.
    for x in it:
        try:
            append(fn(x))
        except BaseException as exc:  # the task's own failure, whatever its type
            errors.append(len(out))
            append(exc)
    return Completion(batch, out, errors or None, time.monotonic() - t0)


def _run_timed(batch: Batch, w: _Worker) -> Completion | None:
    fn = batch.fn
    t0, out, errors, it = begin(batch)
    with w.lock:
        w.out = out
        w.errors = errors
    lock = w.lock
    for x in it:
        with lock:
            if w.abandoned:
                return None
            w.current = (batch, len(out), time.monotonic())
        failed = False
        try:
            value = fn(x)
        except BaseException as exc:  # the task's own failure, whatever its type
            value, failed = exc, True
        with lock:
            if w.gone():  # abandoned while fn ran: expire() has reported this item
                return None
            w.current = None
            if failed:
                errors.append(len(out))
            out.append(value)
    with lock:
        w.out = []
        w.errors = []
    return Completion(batch, out, errors or None, time.monotonic() - t0)
