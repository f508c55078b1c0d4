"""Single calls on a pool: ``Pool.submit`` and ``Pool.schedule``, one future each.

::

    submit/schedule ──▶ Call ──Batch of one──▶ Backend
                         ▲        on_start: the future runs (once, however
                         │        often the backend sends the call)
                         └──sink(Completion): a result, an error, a retry
                            after a backoff, a re-run (its outcome was
                            lost), or "dropped"
    watch thread (only while a call has timeout= or waits to be retried):
        expires overdue calls (Backend.expire), sends retries when due

This is the policy of single calls, as ``_engine`` is the policy of maps:
a timeout is a deadline on what ``Backend.running()`` reports, retries follow
``retry_on`` with the backoff of ``conveyor.map``. No lock of this module is
held while it calls the backend or completes a future, so a backend may
report a call from inside ``submit`` or ``cancel`` (a rejected or dropped
batch) without deadlocking.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from ._backends._base import WAIT_SLICE, Backend, Batch, Completion
from ._engine.policy import LOST_TRIES, backoff_delay, lost_for_good
from .errors import PoolClosed, TaskTimeout

__all__ = ["CallOptions", "Calls"]

POLL = 0.02   # seconds between looks at a timed call that has not started yet


@dataclass(frozen=True)
class CallOptions:
    """Checked options of one call (see ``Pool.schedule``)."""

    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: float = 0.1


PLAIN = CallOptions()


class Call:
    """One submitted call: its future, and what it needs until it ends."""

    __slots__ = ("attempt", "batch", "expired", "fn", "future", "lost", "options", "packed",
                 "started")

    def __init__(self, fn: Callable[[Any], Any], packed: Any, options: CallOptions) -> None:
        self.fn: Callable[[Any], Any] | None = fn
        self.packed = packed            # (args, kwargs): dropped once the call ends
        self.options = options
        self.future: Future[Any] = Future()
        self.attempt = 0
        self.lost = 0                   # times its outcome was lost (see _report)
        self.started = False
        self.batch: Batch | None = None
        self.expired: Batch | None = None   # the attempt already failed with TaskTimeout

    def on_start(self) -> bool:
        """``Batch.on_start``: the future runs, the first time a backend takes the call.

        A backend may send a call again (its worker died before it started,
        a retry): only the first take moves the future to RUNNING.
        """
        if self.started:
            return not self.future.done()
        self.started = True
        try:
            return self.future.set_running_or_notify_cancel()
        except RuntimeError:   # done already: nothing to run
            return False


class Calls:
    """The calls a pool runs one by one: their futures, timeouts and retries."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()   # guards what follows; never held across a call out
        self._idle = threading.Condition(self._lock)
        self._pending: dict[Call, None] = {}   # not ended yet, in submission order
        self._timed: dict[Call, None] = {}
        self._retries: list[tuple[float, int, Call]] = []
        self._tie = itertools.count()
        self._watcher: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending)

    # -- submitting ------------------------------------------------------------
    def submit(self, fn: Callable[[Any], Any], packed: Any,
               options: CallOptions = PLAIN) -> Future[Any]:
        call = Call(fn, packed, options)
        with self._lock:
            self._pending[call] = None
            if options.timeout is not None:
                self._timed[call] = None
                self._watch()
        call.future.add_done_callback(self._cancelled_cb(call))
        self._send(call)
        return call.future

    def fail(self, error: BaseException) -> Future[Any]:
        """A future that has already failed with ``error`` (a call that cannot be sent)."""
        fut: Future[Any] = Future()
        fut.set_running_or_notify_cancel()
        fut.set_exception(error)
        return fut

    def _cancelled_cb(self, call: Call) -> Callable[[Future[Any]], None]:
        def on_done(f: Future[Any]) -> None:
            if f.cancelled():   # before it started: drop it from the backend's queue
                batch = call.batch
                self._finish(call)
                if batch is not None:
                    self._backend.cancel(batch)
        return on_done

    def _send(self, call: Call) -> None:
        assert call.fn is not None
        batch = Batch(call.fn, [call.packed], self._report, owner=self, group=call,
                      attempt=call.attempt, timed=call.options.timeout is not None)
        batch.on_start = call.on_start
        call.batch = batch
        self._backend.submit(batch)

    # -- outcomes --------------------------------------------------------------
    def _report(self, done: Completion) -> None:
        call: Call = done.batch.group
        fut = call.future
        if fut.done():
            self._finish(call)
            return
        if not done.values:
            if done.lost:
                self._settle(call, PoolClosed(
                    "the pool's workers stopped before this call could finish (the pool "
                    "was shut down, or the interpreter is exiting)"), failed=True)
            elif fut.running():   # stopped while it ran (close with cancel, Ctrl-C)
                self._settle(call, PoolClosed("the pool was shut down while this call ran"),
                             failed=True)
            else:                 # dropped from the queue before it started
                fut.cancel()
                self._finish(call)
            return
        value = done.values[0]
        failed = bool(done.errors)
        if done.rerun is not None and done.rerun[0] < done.rerun[1]:
            # It ran, but its outcome was lost: run it again, as a map does
            # (the same bound: _engine.policy.LOST_TRIES).
            call.lost += 1
            if done.batch.cancelled:
                self._settle(call, PoolClosed("the pool was shut down while this call ran"),
                             failed=True)
                return
            if call.lost <= LOST_TRIES:
                self._send(call)
                return
            value, failed = lost_for_good(call.lost, done.cause), True
        if failed and self._retry(call, value):
            return
        self._settle(call, value, failed=failed)

    def _retry(self, call: Call, error: BaseException) -> bool:
        opts = call.options
        if call.attempt >= opts.retries or not isinstance(error, opts.retry_on):
            return False
        with self._lock:
            if self._closed:
                return False
            due = time.monotonic() + backoff_delay(opts.backoff, call.attempt)
            call.attempt += 1
            heapq.heappush(self._retries, (due, next(self._tie), call))
            self._watch()
        return True

    def _settle(self, call: Call, value: Any, *, failed: bool) -> None:
        fut = call.future
        if not fut.running():
            try:
                runs = fut.set_running_or_notify_cancel()
            except RuntimeError:   # done already
                runs = False
            if not runs:
                self._finish(call)   # cancelled meanwhile
                return
        try:
            if failed:
                fut.set_exception(value)
            else:
                fut.set_result(value)
        except InvalidStateError:
            pass
        self._finish(call)

    def _finish(self, call: Call) -> None:
        call.packed = call.fn = call.batch = call.expired = None   # hold nothing of a done call
        with self._lock:
            self._pending.pop(call, None)
            self._timed.pop(call, None)
            if not self._pending:
                self._idle.notify_all()

    # -- shutting down ---------------------------------------------------------
    def cancel_pending(self) -> None:
        """Cancel every call that has not started (``shutdown(cancel_futures=True)``)."""
        with self._lock:
            calls = list(self._pending)
        for call in calls:
            call.future.cancel()   # only succeeds for a call that has not started

    def wait_idle(self) -> None:
        """Wait until every call has ended (in slices, so that Ctrl-C lands)."""
        with self._lock:
            while self._pending:
                self._idle.wait(WAIT_SLICE)

    def close(self) -> None:
        """No more retries; the watch thread ends once no timed call is left."""
        with self._lock:
            self._closed = True
            retries, self._retries = self._retries, []
        self._wake.set()
        for _, _, call in retries:   # waiting for a retry that will not come: its last error
            fut = call.future
            if not fut.done():
                self._settle(call, PoolClosed("the pool was shut down while this call "
                                              "waited to be retried"), failed=True)

    # -- the watch thread ------------------------------------------------------
    def _watch(self) -> None:
        """Start the watch thread if it is not running (lock held); wake it."""
        self._wake.set()
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._run_watch, daemon=True,
                                             name="conveyor-pool-watch")
            self._watcher.start()

    def _run_watch(self) -> None:
        while True:
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                due = []
                while self._retries and self._retries[0][0] <= now:
                    due.append(heapq.heappop(self._retries)[2])
                wake = self._retries[0][0] if self._retries else None
                timed = bool(self._timed)
                if not due and not timed and wake is None:
                    self._watcher = None
                    return
            for call in due:
                if call.fn is not None:
                    self._send(call)
            if wake is None and not timed:
                continue   # sent the last retries: look again (it may be the end)
            if timed:
                deadline = self._expire_overdue(time.monotonic())
                wake = deadline if wake is None else min(wake, deadline)
            assert wake is not None
            self._wake.wait(max(0.0, min(wake - time.monotonic(), 1.0)))

    def _expire_overdue(self, now: float) -> float:
        """Fail the timed calls that overran; returns when to look again."""
        with self._lock:
            timed = list(self._timed)
        running = {r.batch: r for r in self._backend.running() if r.batch.owner is self}
        wake = now + 1.0
        for call in timed:
            batch, timeout = call.batch, call.options.timeout
            assert timeout is not None
            entry = running.get(batch) if batch is not None else None
            if entry is None:
                wake = min(wake, now + POLL)   # queued, or between attempts
                continue
            deadline = entry.since + timeout
            if deadline > now:
                wake = min(wake, deadline)
            elif call.expired is not batch:
                call.expired = batch
                self._backend.expire(entry, TaskTimeout(
                    f"the call ran longer than timeout={timeout:g} s", seconds=timeout))
        return wake
