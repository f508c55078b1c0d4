"""backend="asyncio": worker coroutines on an event loop.

::

    engine --submit (on the loop: direct;  --> deque[Batch] / waiting workers
             else call_soon_threadsafe)          |  worker task 1..N (on the loop)
                                                 |  out.append(await fn(x)) per item
    engine <--batch.sink(Completion)-------------+

On conveyor's shared loop and under ``amap`` the run's core runs on the loop
too (the engine's event-loop driver: ``event_loop``), so submitting and
reporting are direct calls; otherwise a dispatcher thread submits across
threads.

The loop is the caller's for ``conveyor.amap``, one given as ``loop=``
(``Pool(backend="asyncio", loop=...)``), or else conveyor's own loop, shared
by every sync map and pool of the process (``conveyor._loop``: a helper
thread, so a sync map works even when the calling thread already runs a loop,
as in a Jupyter cell). The backend never stops a loop it did not start. Worker
tasks start lazily, up to ``workers``; batches handed over while a worker
waits go to it directly, without a queue.

Timeouts and cancellation are real: the worker task awaiting the item is
cancelled. The worker tells an expiry (the item fails with ``TaskTimeout``,
the worker goes on with the batch) from a cancellation of the run (the batch is
reported with the items finished so far) by a flag set on the loop before the
cancel. A coroutine that blocks the loop (``time.sleep`` inside ``async def``)
cannot be cancelled by anyone; use the thread backend for such code.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .._loop import LoopThread, current_shared_loop, on_shared_loop, shared_loop
from .._worker import set_thread_state
from ._base import (
    WAIT_SLICE,
    Backend,
    Batch,
    Completion,
    Running,
    begin,
    dropped,
    initializer_failed,
    running_items,
    settle_unrunnable,
    take_unstarted,
)

__all__ = ["AsyncioBackend"]


class _Worker:
    __slots__ = ("batch", "cancelling", "cancels", "current", "expired", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.batch: Batch | None = None
        self.current: tuple[Batch, int, float] | None = None
        self.expired: BaseException | None = None
        self.cancelling = False     # its batch is cancelled
        self.cancels = 0            # task.cancel() calls made and not yet handled


class AsyncioBackend(Backend):
    name = "asyncio"
    runs_coroutines, runs_functions = True, False
    options = Backend.options | {"loop"}
    can_steal = True
    batch_target = 0.002
    max_batch = 4096
    loop_driven = True

    @classmethod
    def default_workers(cls) -> int:
        return 100

    def __init__(self, workers: int, *, loop: asyncio.AbstractEventLoop | None = None,
                 initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        if loop is not None:
            if not isinstance(loop, asyncio.AbstractEventLoop):
                raise TypeError(f"backend='asyncio': loop= must be an asyncio event loop "
                                f"(one you run), got {loop!r}")
            if loop.is_closed():
                raise ValueError("backend='asyncio': the loop given as loop= is closed; "
                                 "give a loop that runs (or leave loop= out to use "
                                 "conveyor's own)")
        self.workers = workers
        self._loop = loop
        # Made by sync code running on the shared loop (a coroutine calling a
        # sync map): that code blocks the shared loop while it waits for this
        # backend's work, which therefore needs a loop of its own. Decided here,
        # in the caller's thread (a map starts its backend in its scheduler's).
        self._needs_own_loop = loop is None and on_shared_loop()
        self._own: LoopThread | None = None
        self._initializer = initializer
        self._initargs = initargs
        # Loop-side state: touched only from the loop's thread.
        self._pending: collections.deque[Batch | None] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[Batch | None]] = collections.deque()
        self._workers: list[_Worker] = []
        self._closing = False
        self._closed = False
        # Thread-safe hand-over from submit() (deque appends/pops are atomic).
        self._inbox: collections.deque[Batch] = collections.deque()
        self._inbox_scheduled = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "backend not started"
        return self._loop

    # -- protocol ------------------------------------------------------------
    def start(self) -> None:
        if self._loop is not None:
            return
        if self._needs_own_loop:
            self._own = LoopThread("conveyor-asyncio")
            self._loop = self._own.loop
        else:
            self._loop = shared_loop()

    def event_loop(self) -> asyncio.AbstractEventLoop | None:
        # conveyor's shared loop, which runs until the interpreter exits, and the
        # loop running in this thread (amap's: the caller's). A loop of the
        # backend's own is stopped (and its thread joined) by a blocking close(),
        # and a loop given to a Pool may not be running yet: those runs keep a
        # dispatcher thread.
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        if loop is current_shared_loop() or self._in_loop():
            return loop
        return None

    def _in_loop(self) -> bool:
        loop = self.loop
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def _call(self, fn: Callable[..., object], *args: Any) -> None:
        if self._in_loop():
            fn(*args)
            return
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:   # the loop is closed: report what it stranded
            self.poll()

    def submit(self, batch: Batch) -> None:
        if self._in_loop():   # the run's core runs on the loop: no hop
            self._enqueue(batch)
            return
        # Batches submitted in a burst cross to the loop together: one
        # call_soon_threadsafe (one wake-up of the loop) per burst, not per batch.
        self._inbox.append(batch)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain_inbox)
            except RuntimeError:   # the loop is closed: nothing will run these
                self.poll()

    def poll(self) -> None:
        loop = self._loop
        if loop is None or not loop.is_closed():
            return
        # A closed loop runs nothing again, and nothing else touches its state.
        self._closing = True
        lost: list[Batch] = []
        while self._inbox:
            lost.append(self._inbox.popleft())
        while self._pending:
            b = self._pending.popleft()
            if b is not None:
                lost.append(b)
        for w in self._workers:
            if w.batch is not None:   # frozen mid-batch with its task
                lost.append(w.batch)
                w.batch = None
        for b in lost:
            b.sink(dropped(b))


    def running(self) -> list[Running]:
        return running_items(self._workers)

    def expire(self, entry: Running, error: BaseException) -> bool:
        self._call(self._expire, entry, error)
        return True

    def steal(self, batch: Batch) -> int | None:
        return take_unstarted(batch)

    def cancel(self, batch: Batch) -> None:
        batch.cancelled = True
        self.steal(batch)
        self._call(self._cancel_running, batch)

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        if self._loop is None or self._closed:
            return
        if self._in_loop():
            # Called on the loop itself (sync code in a callback): can't wait here.
            self._begin_close(cancel)
            return
        loop = self._loop
        if loop.is_closed() or not loop.is_running():
            self._closed = True
            return
        closing = self.aclose(cancel=cancel)
        try:
            fut = asyncio.run_coroutine_threadsafe(closing, loop)
        except RuntimeError:   # the loop closed meanwhile (the interpreter exits)
            closing.close()
            self.poll()
            return
        own = self._own
        if not wait:
            if own is not None:
                fut.add_done_callback(lambda _: own.stop_soon())
            return
        while not loop.is_closed():   # in slices, like join(): Ctrl-C must land
            try:
                fut.result(WAIT_SLICE)
                break
            except concurrent.futures.TimeoutError:
                continue
            except concurrent.futures.CancelledError:
                break   # the loop winds down at exit and cancelled the closing too
        self.poll()   # a loop closed under us (at exit) stranded what it held
        if own is not None:
            own.stop()

    async def aclose(self, *, cancel: bool) -> None:
        """Close from the loop's own thread, awaiting the workers' end."""
        if self._closed:
            return
        self._begin_close(cancel)
        tasks = [w.task for w in self._workers if w.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._closed = True

    # -- loop side -------------------------------------------------------------
    def _begin_close(self, cancel: bool) -> None:
        if self._closing:
            return
        self._closing = True
        if cancel:
            while self._pending:
                b = self._pending.popleft()
                if b is not None:
                    b.sink(dropped(b))
            for w in self._workers:
                if w.task is not None:
                    w.task.cancel()
        else:
            self._pending.extend([None] * len(self._workers))
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    def _drain_inbox(self) -> None:
        # Clear the flag first: a batch appended after this point either is
        # seen by the loop below or schedules another drain.
        self._inbox_scheduled = False
        inbox = self._inbox
        while inbox:
            self._enqueue(inbox.popleft())

    def _enqueue(self, batch: Batch) -> None:
        if self._closing:
            batch.sink(dropped(batch))
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(batch)
                return
        self._pending.append(batch)
        if len(self._workers) < self.workers:
            w = _Worker()
            self._workers.append(w)
            w.task = self.loop.create_task(self._work(w))

    # Both run on the loop while the worker is suspended inside `await fn(x)`
    # (w.current / w.batch are set only there), so the CancelledError lands in
    # that item. One cancel() at a time: a second reason just sets its flag.
    def _expire(self, entry: Running, error: BaseException) -> None:
        for w in self._workers:
            cur = w.current
            if cur is not None and cur[0] is entry.batch and cur[1] == entry.pos \
                    and w.task is not None and w.expired is None:
                w.expired = error
                _cancel_once(w)
                return

    def _cancel_running(self, batch: Batch) -> None:
        for w in self._workers:
            if w.batch is batch and w.task is not None and not w.cancelling:
                w.cancelling = True
                _cancel_once(w)

    async def _work(self, w: _Worker) -> None:
        set_thread_state()   # conveyor.worker_state(): this worker coroutine's own dict
        loop = self.loop
        init_error: BaseException | None = None
        try:
            if self._initializer is not None:
                r = self._initializer(*self._initargs)
                if inspect.isawaitable(r):
                    await r
        except Exception as exc:
            init_error = initializer_failed(self._initializer, exc)
        try:
            while True:
                if self._pending:
                    batch = self._pending.popleft()
                else:
                    fut: asyncio.Future[Batch | None] = loop.create_future()
                    self._waiters.append(fut)
                    batch = await fut
                if batch is None:
                    return
                if not settle_unrunnable(batch, init_error):
                    await self._run(batch, w)
                # Hold nothing while idle: a batch keeps its items and results alive.
                batch = fut = None  # type: ignore[assignment]
        except asyncio.CancelledError:
            if not self._closing:
                # Cancelled by someone else: the loop is shutting down (the end
                # of asyncio.run). Drop what is queued, so runs hear of it.
                self._begin_close(cancel=True)
            raise
        finally:
            if w in self._workers:
                self._workers.remove(w)

    async def _run(self, batch: Batch, w: _Worker) -> None:
        fn: Callable[[Any], Coroutine[Any, Any, Any]] = batch.fn
        timed = batch.timed
        t0, out, errors, it = begin(batch)
        w.batch = batch
        task = w.task
        try:
            for x in it:
                if timed:
                    w.current = (batch, len(out), time.monotonic())
                failed = False
                try:
                    value = await fn(x)
                except asyncio.CancelledError as exc:
                    # Our own cancel() calls (an expiry, a cancelled batch; at
                    # most one is issued at a time) are handled here.
                    ours = w.cancels
                    _forget_cancels(w, task)
                    if ours and _still_cancelled(task):
                        # Someone else cancelled too (the loop is shutting down):
                        # both requests arrived as this one CancelledError.
                        raise
                    if w.cancelling and not self._closing:
                        # This batch was cancelled, not the worker: stop here,
                        # report the prefix, serve the next batch.
                        w.cancelling = False
                        w.expired = None
                        break
                    if w.expired is not None:
                        value, failed = w.expired, True
                        w.expired = None
                    elif self._closing or (not ours and _was_cancelled(task)):
                        raise   # the backend closes, or the loop is shutting down
                    else:
                        # Nobody cancelled us: the coroutine raised
                        # CancelledError itself, a failure like any other.
                        value, failed = exc, True
                except BaseException as exc:  # the task's own failure
                    value, failed = exc, True
                if w.cancels:   # we cancelled, and the coroutine swallowed it
                    _forget_cancels(w, task)
                    if w.expired is not None:
                        value, failed = w.expired, True
                        w.expired = None
                    if w.cancelling and not self._closing:
                        w.cancelling = False
                        if failed:
                            errors.append(len(out))
                        out.append(value)
                        break
                w.current = None
                if failed:
                    errors.append(len(out))
                out.append(value)
        finally:
            w.current = None
            w.batch = None
            w.cancelling = False
            w.expired = None
            batch.sink(Completion(batch, out, errors or None, time.monotonic() - t0))


def _cancel_once(w: _Worker) -> None:
    if w.cancels == 0 and w.task is not None:
        w.cancels = 1
        w.task.cancel()


def _forget_cancels(w: _Worker, task: asyncio.Task[Any] | None) -> None:
    for _ in range(w.cancels):
        _uncancel(task)
    w.cancels = 0


def _still_cancelled(task: asyncio.Task[Any] | None) -> bool:
    """After forgetting our own cancel() calls: is a cancellation still requested?

    Python 3.11+ counts the requests; 3.10 cannot tell, and we assume not (so
    on 3.10 a loop shutdown that lands together with an expiry is missed and
    the worker carries on: a documented limitation).
    """
    cancelling = getattr(task, "cancelling", None)
    return cancelling is not None and bool(cancelling())


def _was_cancelled(task: asyncio.Task[Any] | None) -> bool:
    """Did someone call ``task.cancel()``? (Python 3.11+ can tell; 3.10: assume so.)"""
    if task is None:
        return False
    cancelling = getattr(task, "cancelling", None)
    return True if cancelling is None else bool(cancelling())


def _uncancel(task: asyncio.Task[Any] | None) -> None:
    # Python 3.11+: forget a cancellation we handled, so that the user's own
    # asyncio.timeout() blocks in later items keep working.
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()
