"""The supervisor: one thread that watches every worker, and the state it guards.

It reads the workers' replies (outcomes, steal answers, log records), sees
deaths (pidfds; elsewhere end of file on the result pipe and a periodic
``poll``), kills a worker whose cancelled batch overstays ``CANCEL_GRACE``,
replaces dead and retired (``max_tasks_per_worker``) workers on demand, and
writes what a worker's socket did not take at once. The backend's calls
(``submit``, ``steal``, ``expire``, ``cancel``, ``close``) change the same
state under :attr:`Supervisor.lock`, and never wait on a worker.

**Selectors, not ``multiprocessing.connection.wait``**: that function builds
a new selector at every call; the supervisor keeps one registration per pipe
and per pidfd for the life of each worker.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import itertools
import os
import selectors
import sys
import threading
import time
import weakref
from collections.abc import Callable

from ... import _logs, _worker
from ..._wire import parent, records
from ..._wire.records import Pos, Status
from .. import _mpshare
from .._base import Completion, dropped, init_failure, initializer_failed, wait_event
from . import deaths
from .jobs import Job, Unstarted, deliver, refused
from .spawn import EXIT_GRACE, Proc, close_task, kill, readable, reap, spawn, unregister_write

__all__ = ["CANCEL_GRACE", "Supervisor"]

CANCEL_GRACE = 0.25      # seconds a cancelled batch may take to finish before its worker is killed
START_FAILURES = 3       # workers dying before running anything before we blame the batch
POLL = 0.5               # seconds between liveness polls where there are no pidfds

_live: weakref.WeakSet[Supervisor] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for supervisor in list(_live):
        supervisor.close(cancel=True, wait=True)


class Supervisor:
    """The workers of one process backend, the jobs waiting for them, and the thread."""

    def __init__(self, workers: int, *, initializer: Callable[..., object] | None,
                 init_bytes: bytes | None, shared: _mpshare.Shared | None,
                 max_tasks: int | None, forward_logs: bool) -> None:
        self.workers = workers
        self._initializer = initializer
        self._init_bytes = init_bytes
        self._shared = shared   # what initargs hold of multiprocessing's
        self._max_tasks = max_tasks
        self._forward_logs = forward_logs   # the workers' log records: see conveyor._logs
        self.lock = threading.Lock()
        self.pending: collections.deque[Job] = collections.deque()
        self.procs: list[Proc] = []
        self.closed = False
        self._bids = itertools.count(1)
        self._deferred: list[Completion] = []   # found under the lock, reported after it
        self._start_failures = 0
        self._stopped = threading.Event()      # the thread ended: every worker reaped
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._worker_path = _worker.__file__

    def next_bid(self) -> int:
        return next(self._bids)

    def warm_up(self) -> None:
        with self.lock:
            self.ensure_started()
            while len(self.procs) < self.workers and not self.closed:
                self._spawn()

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        lost: list[Job] = []
        with self.lock:
            self.closed = True
            if cancel:   # also when already closed: close() then Ctrl-C, atexit
                lost = list(self.pending)
                self.pending.clear()
                for p in self.procs:
                    if p.jobs:
                        p.cancel_at = time.monotonic()   # kill now
                        for job in p.jobs:
                            job.batch.cancelled = True
            self.wake()
            thread = self._thread
        for job in lost:
            job.batch.sink(dropped(job.batch))
        if thread is None:
            self._release_shared()
            self._stopped.set()
            return
        if wait and thread is not threading.current_thread():
            wait_event(self._stopped)

    # -- dispatching (lock held) -----------------------------------------------
    def ensure_started(self) -> None:
        if self._thread is not None or self.closed:
            return
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._supervise, daemon=True,
                                        name="conveyor-process-supervisor")
        self._thread.start()
        _live.add(self)

    def wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")

    def dispatch(self) -> None:
        """Hand pending jobs to idle workers, starting workers up to ``workers``.

        One job per worker: a job written into the pipe of a busy worker could
        not be taken back if the item it runs hangs, so none is queued there.
        The round trip between two jobs is small beside a batch's ``batch_target``.
        """
        pending = self.pending
        while pending:
            target = None
            for p in self.procs:
                if not p.jobs and not p.retiring and p.cancel_at == 0.0:
                    target = p
                    break
            if target is None and \
                    sum(1 for p in self.procs if not p.retiring) < self.workers:
                self.ensure_started()
                target = self._spawn()
            if target is None:
                return
            job = pending.popleft()
            if job.batch.cancelled:   # its run stopped meanwhile: not sent at all
                self._deferred.append(Completion(job.batch, [], None, 0.0))
                self.wake()
                continue
            if not job.sent:
                # Once per job: one requeued because its worker died before
                # starting it has started already for Pool.submit's future
                # (whose set_running_or_notify_cancel raises the second time).
                job.sent = True
                refusal = refused(job.batch)
                if refusal is not None:
                    self._deferred.append(refusal)
                    self.wake()   # the supervisor reports it
                    continue
            self._send(target, job)

    def _send(self, p: Proc, job: Job) -> None:
        import pickle

        fn_bytes = None
        if job.key not in p.known:
            fn_bytes = job.fn_data
            p.known[job.key] = None
            if len(p.known) > records.FN_CACHE:
                del p.known[next(iter(p.known))]
        message = pickle.dumps(records.Task(job.bid, job.key, fn_bytes, job.batch.timed,
                                            job.items), 5)
        batch = job.batch
        batch.out, batch.errs = [], []   # filled as outcomes come (harvest)
        batch.it = Unstarted(p.q, job)   # for the scheduler: how many wait (steal)
        batch.started = time.monotonic()
        p.jobs.append(job)
        p.tasks += job.size
        if self._max_tasks is not None and p.tasks >= self._max_tasks:
            p.retiring = True
        self._write(p, message)

    def _write(self, p: Proc, payload: bytes) -> None:
        """Send a message to ``p`` without blocking (lock held).

        A worker reads its socket only between batches (or after its
        initializer), so what does not fit is left to the supervisor thread,
        which writes it when the socket is writable: nobody ever waits here.
        """
        if p.write(payload):
            self.wake()

    def _spawn(self) -> Proc:
        p = spawn(self._worker_path, self._shared.fds if self._shared is not None else ())
        self.procs.append(p)
        assert self._selector is not None
        self._selector.register(p.result_r, selectors.EVENT_READ, (p, "result"))
        if p.pidfd >= 0:
            self._selector.register(p.pidfd, selectors.EVENT_READ, (p, "exit"))
        start = records.Start(list(sys.path), self._init_bytes, self._max_tasks,
                              _logs.snapshot() if self._forward_logs else None)
        self._write(p, parent.dumps(start))
        return p

    # -- the supervisor thread -------------------------------------------------
    def _supervise(self) -> None:
        try:
            self._watch()
        finally:
            # Under the lock: steal() and wake() write to these descriptors,
            # and a closed number may be reused by the next file opened.
            with self.lock:
                self.closed = True
                procs = list(self.procs)
                self.procs.clear()
                for p in procs:
                    kill(p)
                    reap(p, self._selector)
                wake = (self._wake_r, self._wake_w)
                self._wake_r = self._wake_w = -1
                for fd in wake:
                    os.close(fd)
                # Normally nothing is left here; after a failure of this thread,
                # the runs waiting for these batches end (PoolClosed) instead of hanging.
                orphans = [job for p in procs for job in p.jobs] + list(self.pending)
                self.pending.clear()
            for job in orphans:
                deliver(dropped(job.batch))
            assert self._selector is not None
            self._selector.close()
            _live.discard(self)
            self._release_shared()   # no worker starts any more
            self._stopped.set()

    def _release_shared(self) -> None:
        if self._shared is not None:
            self._shared.close()

    def _watch(self) -> None:
        selector = self._selector
        assert selector is not None
        exiting_since = 0.0
        while True:
            timeout = self._timers()
            with self.lock:
                idle = self.closed and not self.pending and \
                    not any(p.jobs for p in self.procs)
                if idle and not exiting_since:
                    exiting_since = time.monotonic()
                    for p in self.procs:
                        close_task(p, self._selector)   # end of file: the worker exits
                if idle and not self.procs:
                    return
                for p in self.procs:
                    if p.outbuf and not p.writing and p.task is not None:
                        selector.register(p.task.fileno(), selectors.EVENT_WRITE, (p, "write"))
                        p.writing = True
            if exiting_since:
                left = exiting_since + EXIT_GRACE - time.monotonic()
                if left <= 0:
                    with self.lock:
                        for p in self.procs:
                            kill(p)
                    left = POLL
                timeout = left if timeout is None else min(timeout, left)
            with self.lock:
                deferred, self._deferred = self._deferred, []
            for done in deferred:
                deliver(done)
            for key, _ in selector.select(0 if self._deferred else timeout):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                p, kind = key.data
                if p not in self.procs:
                    continue
                if kind == "write":
                    with self.lock:
                        if p.write_more():
                            unregister_write(p, self._selector)
                elif kind == "exit":
                    self._on_death(p)
                else:
                    self._on_readable(p)

    def _timers(self) -> float | None:
        """Kill workers that overstay a cancelled batch; poll where no pidfd."""
        now = time.monotonic()
        wake: float | None = None
        for p in list(self.procs):
            if p.cancel_at:
                if now >= p.cancel_at:
                    kill(p)
                    if p.pidfd < 0:
                        self._on_death(p)
                else:
                    left = p.cancel_at - now
                    wake = left if wake is None else min(wake, left)
            if p.pidfd < 0:
                if p.popen is not None and p.popen.poll() is not None:
                    self._on_death(p)
                wake = POLL if wake is None else min(wake, POLL)
        return wake

    def _on_readable(self, p: Proc) -> None:
        try:
            message = records.read_message(p.result_r)
        except OSError:
            message = None
        if message is None:   # end of file: it is dying (or retiring)
            assert self._selector is not None
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(p.result_r)
            if p.pidfd < 0:
                self._on_death(p)
            return
        self._on_message(p, message)

    def _on_message(self, p: Proc, message: bytes) -> None:
        import pickle

        reply = pickle.loads(message)
        kind = type(reply)
        if kind is records.Logs:   # before the job: it may have none (initializer)
            _logs.replay(reply.entries, functools.partial(_log_index, p))
            return
        if kind is records.Stolen:
            # A reply may come after its batch ended (it then took nothing).
            if p.jobs and p.jobs[0].bid == reply.bid:
                job = p.jobs[0]
                job.stolen = reply.keeps
                job.steal_reply.set()
            return
        assert kind is records.Reply, kind
        job = p.jobs[0]
        bid, status, start = reply.bid, reply.status, reply.start
        assert job.bid == bid, (job.bid, bid)
        batch = job.batch
        if status == Status.ITEMS_FAILED:
            self._items_failed(p, job)
            return
        if status in (Status.PARTIAL, Status.DONE):
            got = parent.outcomes(reply.outcomes, start, reply.whole)
            if got is None:   # not as one: the worker sends them again one by one
                with self.lock:
                    self._write(p, pickle.dumps(records.Ask(bid, resend=True), 5))
                return
            values, errors = got
        if status == Status.PARTIAL:
            out, errs = batch.out, batch.errs
            assert out is not None
            assert errs is not None
            assert len(out) == start
            errs.extend(errors)      # before the outcomes: see Backend.harvest
            out.extend(values)
            return
        with self.lock:
            p.jobs.popleft()
            p.ran = True
            self._start_failures = 0
            p.cancel_at = 0.0
            if p.retiring:
                close_task(p, self._selector)   # it exits now; a fresh one starts on demand
            self.dispatch()
            if reply.whole and not p.jobs:   # (a next job says it too)
                self._write(p, pickle.dumps(records.Ask(bid, resend=False), 5))
        job.steal_reply.set()   # a steal that raced with the end: nothing to take
        batch.it = None         # Unstarted -> job -> batch: a cycle holding its items
        if status == Status.DONE:
            if start:
                assert batch.out is not None
                assert batch.errs is not None
                values = batch.out + values
                errors = batch.errs + errors
            done = Completion(batch, values, errors or None, reply.busy)
        else:   # Status.INIT_FAILED
            failures = pickle.loads(reply.outcomes)[2]   # plain: see pack_outcomes
            cause = parent.rebuild(failures[0])
            done = Completion(batch, [init_failure(initializer_failed(self._initializer, cause))
                                      for _ in range(job.size)],
                              list(range(job.size)), 0.0)
        deliver(done)

    def _items_failed(self, p: Proc, job: Job) -> None:
        """``p`` could not unpickle ``job``'s items as one, and ran none: they go
        again one by one, so that the one at fault fails alone."""
        size = job.size
        done = self._one_by_one(job)   # outside the lock: a __reduce__ is the user's code
        with self.lock:
            p.jobs.popleft()
            p.ran = True
            p.tasks -= size
            p.retiring = self._max_tasks is not None and p.tasks >= self._max_tasks
            p.cancel_at = 0.0
            if job.batch.cancelled:   # read under the lock: see cancel()
                done = Completion(job.batch, [], None, 0.0)
            elif done is None:
                self.pending.appendleft(job)
            self.dispatch()
        if done is not None:
            job.batch.it = None   # break the cycle (see _on_message)
            deliver(done)

    def _one_by_one(self, job: Job) -> Completion | None:
        """Pickle ``job``'s items again, one per item, under a new batch id (what
        the slot or a late message says of the old one is not about this).

        None, or the completion to report if its first item cannot be pickled on
        its own any more (the items after it are then sent again by the scheduler).
        """
        batch = job.batch
        payload, n, error = parent.pickle_items(batch.items[:job.size], parent.dumps_each)
        if payload is None:
            assert error is not None
            return Completion(batch, [error], [0], 0.0)
        job.bid, job.items, job.size = next(self._bids), payload, n
        return None

    def _on_death(self, p: Proc) -> None:
        # Outcomes it sent before dying come first.
        while p.result_r >= 0 and readable(p.result_r):
            try:
                message = records.read_message(p.result_r)
            except OSError:
                message = None
            if message is None:
                break
            self._on_message(p, message)
        # Dead while it unpickled the items sent in one pickle: nothing says which
        # of them did it, and none has run. They go again one by one (pickled
        # outside the lock: a __reduce__ is the user's code): that one fails alone.
        q = p.q
        again = p.jobs[0] if p.jobs and q is not None and q[0] == p.jobs[0].bid \
            and q[1] == Pos.ITEMS and not p.jobs[0].batch.cancelled else None
        early = self._one_by_one(again) if again is not None else None
        reports: list[Completion] = []
        with self.lock:
            if p not in self.procs:
                return
            self.procs.remove(p)
            returncode = reap(p, self._selector)
            running = q is not None and bool(p.jobs) and q[0] == p.jobs[0].bid
            pos = q[1] if q is not None else 0
            jobs = list(p.jobs)
            p.jobs.clear()
            if again is not None:   # still jobs[0]: only this thread takes jobs away
                if again.batch.cancelled:   # read under the lock: see cancel()
                    early = Completion(again.batch, [], None, 0.0)
                elif early is None:
                    self.pending.appendleft(again)
            elif jobs:
                early = deaths.died_loading(p, jobs[0], running, returncode,
                                             self._initializer)
            if early is not None or again is not None:
                if early is not None:
                    jobs[0].batch.it = None   # break the cycle (see _on_message)
                    reports.append(early)
                jobs = jobs[1:]
            elif jobs and not running and not p.ran and p.reason is None \
                    and not p.cancel_at and returncode != 0:
                self._start_failures += 1
                if self._start_failures >= START_FAILURES:
                    running, pos = True, 0   # it dies as it starts: blame the batch
            fated, again_jobs = deaths.fates(p, jobs, running, pos, returncode)
            reports += fated
            for job in again_jobs:
                self.pending.appendleft(job)   # never started: it runs elsewhere
            self.dispatch()   # also while closing: close(cancel=False) runs what is queued
        for done in reports:
            deliver(done)


def _log_index(p: Proc, where: tuple[int, int]) -> int | None:
    """The input index of the item a record was logged in (``worker._forward_logs``)."""
    bid, pos = where
    job = p.jobs[0] if p.jobs else None
    return _logs.item_index(job.batch, pos) if job is not None and job.bid == bid else None
