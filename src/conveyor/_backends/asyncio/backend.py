"""The asyncio backend: worker coroutines drawing items on one event loop
(see the package's docstring)."""


from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import inspect
import time
from collections.abc import Callable
from typing import Any

from ..._loop import LoopThread, current_shared_loop, on_shared_loop, shared_loop
from ..._worker import set_thread_state
from .._base import (
    WAIT_SLICE,
    Backend,
    Batch,
    Completion,
    Running,
    dropped,
    init_failure,
    initializer_failed,
    running_items,
)
from .draw import Draw, Worker, cancel_once, outcome, swallowed

__all__ = ["AsyncioBackend"]


class AsyncioBackend(Backend):
    name = "asyncio"
    runs_coroutines, runs_functions = True, False
    options = Backend.options | {"loop"}
    # Workers draw the items of a batch one by one: a free worker takes the next
    # item of the oldest batch, so no worker idles while another holds a queue
    # of items, and nothing needs stealing back.
    shares_batches = True
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
        self._pending: collections.deque[Draw] = collections.deque()   # items left to draw
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._workers: list[Worker] = []
        self._dirty: list[Draw] = []     # batches with something to report
        self._report_due = False
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
        lost = list(self._inbox)   # never enqueued: no worker saw them
        self._inbox.clear()
        draws: dict[Draw, None] = dict.fromkeys(self._pending)
        self._pending.clear()
        for w in self._workers:
            b = w.batch
            if b is not None:   # frozen mid-item with its task
                w.batch = None
                if isinstance(b.it, Draw):
                    draws[b.it] = None
        draws.update(dict.fromkeys(self._dirty))
        self._dirty.clear()
        for d in draws:
            if not d.finished:
                d.finish()
                lost.append(d.batch)
        for b in lost:
            b.sink(dropped(b))

    def running(self) -> list[Running]:
        return running_items(self._workers)

    def expire(self, entry: Running, error: BaseException) -> bool:
        self._call(self._expire, entry, error)
        return True

    def cancel(self, batch: Batch) -> None:
        batch.cancelled = True   # read by the next draw, if it comes first
        self._call(self._cancel, batch)

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
        self._report()   # what the last items reported
        self._closed = True

    # -- loop side -------------------------------------------------------------
    def _begin_close(self, cancel: bool) -> None:
        if self._closing:
            return
        self._closing = True
        if cancel:
            while self._pending:
                d = self._pending.popleft()
                d.end = d.taken
                if d.taken == 0:
                    d.finish()
                    d.batch.sink(dropped(d.batch))
                elif d.over:
                    self._mark(d)
            for w in self._workers:
                if w.task is not None:
                    w.task.cancel()
        while self._waiters:   # idle workers: end (cancel=False: once nothing is left)
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
        d = batch.it = Draw(batch)
        self._pending.append(d)
        n = batch.limit   # wake (or start) a worker per item, as far as there are workers
        waiters = self._waiters
        while waiters and n > 0:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1
        new = min(n, self.workers - len(self._workers))
        for _ in range(new):
            w = Worker()
            self._workers.append(w)
            w.task = self.loop.create_task(self._work(w))

    def _mark(self, d: Draw) -> None:
        """``d`` has outcomes to report, or has ended: report at the end of this burst."""
        if d.dirty:
            return
        d.dirty = True
        self._dirty.append(d)
        if not self._report_due:
            self._report_due = True
            with contextlib.suppress(RuntimeError):   # closed: poll() reports what is left
                self.loop.call_soon(self._report)

    def _report(self) -> None:
        """Report the runs finished in this burst of the loop, a completion per run."""
        self._report_due = False
        dirty, self._dirty = self._dirty, []
        for d in dirty:
            d.dirty = False
            if d.finished:
                continue
            b = d.batch
            runs = d.runs
            if d.run:
                runs.append((d.run_at, d.run, d.errs))
                d.run_at += len(d.run)
                d.run, d.errs = [], []
            d.runs = []
            last = None
            lost = False
            if d.over:
                d.finish()
                # Items that ended without an outcome in a batch nobody cancelled:
                # the backend closed, or the loop shut down, under them.
                lost = d.unfinished > 0 and not b.cancelled
                # The last completion says where the batch ended: positions from
                # there on did not run (cancelled before they were drawn).
                last = runs.pop() if runs and runs[-1][0] + len(runs[-1][1]) == d.taken \
                    else (d.taken, [], [])
            for at, values, errs in runs:
                b.sink(Completion(b, values, errs or None, 0.0, offset=at, more=True))
            if lost:
                if last is not None and last[1]:
                    b.sink(Completion(b, last[1], last[2] or None, 0.0, offset=last[0],
                                      more=True))
                b.sink(dropped(b))
            elif last is not None:
                b.sink(Completion(b, last[1], last[2] or None, d.busy, offset=last[0]))

    def _ended(self, d: Draw, pos: int, value: Any, failed: bool) -> None:
        """The item at ``pos`` of ``d``'s batch ended with this outcome."""
        d.running -= 1
        run = d.run
        if pos != d.run_at + len(run):   # not next to the run: start another
            if run:
                d.runs.append((d.run_at, run, d.errs))
                d.run = run = []
                d.errs = []
            d.run_at = pos
        if failed:
            d.errs.append(len(run))
        run.append(value)
        if not d.dirty:
            self._mark(d)

    # Both run on the loop while the worker is suspended inside `await fn(x)`
    # (w.current / w.batch are set only there), so the CancelledError lands in
    # that item. One cancel() at a time: a second reason just sets its flag.
    def _expire(self, entry: Running, error: BaseException) -> None:
        for w in self._workers:
            cur = w.current
            if cur is not None and cur[0] is entry.batch and cur[1] == entry.pos \
                    and w.task is not None and w.expired is None:
                w.expired = error
                cancel_once(w)
                return

    def _cancel(self, batch: Batch) -> None:
        d = batch.it
        if not isinstance(d, Draw) or d.finished:
            return
        if d.end > d.taken:   # nothing more is drawn from it
            d.end = d.taken
            with contextlib.suppress(ValueError):
                self._pending.remove(d)
        for w in self._workers:
            if w.batch is batch and w.task is not None and not w.cancelling:
                w.cancelling = True
                cancel_once(w)
        if d.over:
            self._mark(d)

    async def _work(self, w: Worker) -> None:
        set_thread_state()   # conveyor.worker_state(): this worker coroutine's own dict
        loop = self.loop
        init_error: BaseException | None = None
        pending = self._pending
        monotonic = time.monotonic
        try:
            try:
                if self._initializer is not None:
                    r = self._initializer(*self._initargs)
                    if inspect.isawaitable(r):
                        await r
            except Exception as exc:
                init_error = initializer_failed(self._initializer, exc)
            while True:
                if not pending:
                    if self._closing:
                        return
                    fut: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(fut)
                    await fut
                    del fut
                    continue
                d = pending[0]
                b = d.batch
                pos = d.taken
                if (pos == 0 or b.cancelled) and not self._may_draw(b, d, pos):
                    del b, d   # hold nothing while idle
                    continue
                d.taken = pos + 1
                if pos + 1 >= d.end:
                    pending.popleft()
                d.running += 1
                if init_error is not None:
                    # Every item this worker takes fails with its own WorkerInitError.
                    self._ended(d, pos, init_failure(init_error), True)
                    del b, d
                    continue
                # The hot path (one turn per item): no calls beyond the item's own.
                timed = b.timed
                w.batch = b
                t = monotonic()
                if timed:
                    w.current = (b, pos, t)
                failed: bool | None = False
                try:
                    value = await b.fn(x := b.items[pos])
                except BaseException as exc:
                    try:
                        value, failed = outcome(w, exc, self._closing)
                    except BaseException:   # the worker leaves (close, loop shutdown)
                        self._left(w, d, t)
                        raise
                if w.cancels:   # we cancelled, and the coroutine swallowed it
                    value, failed = swallowed(w, value, failed)
                d.busy += monotonic() - t
                w.batch = None
                if timed:
                    w.current = None
                if failed is None:   # its batch was cancelled: this item did not finish
                    self._left(w, d, t, busy=False)
                    del b, d, x, value
                    continue
                run = d.run
                if not failed and pos == d.run_at + len(run):
                    d.running -= 1
                    run.append(value)
                    if not d.dirty:
                        self._mark(d)
                else:
                    self._ended(d, pos, value, failed)
                # Hold nothing while idle: a batch keeps its items and results alive.
                del b, d, x, value
        except asyncio.CancelledError:
            if not self._closing:
                # Cancelled by someone else: the loop is shutting down (the end
                # of asyncio.run). Drop what is queued, so runs hear of it.
                self._begin_close(cancel=True)
            raise
        finally:
            if w in self._workers:
                self._workers.remove(w)

    def _left(self, w: Worker, d: Draw, t: float, *, busy: bool = True) -> None:
        """The worker's item ends without an outcome."""
        if busy:
            d.busy += time.monotonic() - t
        w.batch = None
        w.current = None
        w.cancelling = False
        w.expired = None
        d.running -= 1
        d.unfinished += 1
        if d.over and not d.dirty:
            self._mark(d)

    def _may_draw(self, b: Batch, d: Draw, pos: int) -> bool:
        """A worker takes the first item of ``b``, or ``b`` was marked cancelled:
        False if nothing more of it may run (cancelled, or a ``Pool.submit``
        future cancelled before it started)."""
        on_start = b.on_start
        if pos == 0:
            b.started = time.monotonic()
        if b.cancelled or (pos == 0 and on_start is not None and not on_start()):
            self._pending.popleft()
            d.end = pos
            if d.over:
                self._mark(d)
            return False
        return True
