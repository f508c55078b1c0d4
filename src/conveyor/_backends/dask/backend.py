"""``DaskBackend``: batches as dask tasks, streamed onto the cluster as the window allows.

See the package's docstring for the shape; ``remote`` is what runs on the
workers, ``recovery`` what happens when the cluster fails a task, ``cluster``
where the client comes from.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from ... import _logs
from ..._wire.functions import fresh, pickle_function
from ..._wire.parent import pickle_items
from ..._wire.records import Ended, Status
from ...errors import NotPicklable
from .._base import Backend, Batch, Completion, Running, dropped
from .cluster import INSTALL, connect, count_threads, import_distributed
from .jobs import Job, log_index, outcomes_of, take_ready
from .receiver import Receiver
from .recovery import Probes, Suspects, failures, restart_worker
from .remote import run_batch

__all__ = ["INSTALL", "DaskBackend", "import_distributed"]

FN_CACHE = 64          # function pickles the client keeps (FIFO)
RECOUNT = 1.0          # seconds between counts of the cluster's threads


class DaskBackend(Backend):
    name = "dask"
    options = Backend.options | {"cluster", "forward_logs"}
    requires = ("distributed",)
    check_available = staticmethod(import_distributed)
    cannot_run = ("{where}: {fn} is a coroutine function; the {name!r} backend runs plain "
                  "functions. Wrap it: def run(x): return asyncio.run(fn(x)).")
    batch_target = 0.25     # dask costs ~1.6 ms a task, plus a round trip: batches of ~250 ms
    max_batch = 16384
    times_items = False     # a task's items cannot be timed one by one: timed batches are 1 item
    batches_per_worker = 2  # both on the cluster: later ones get the size batching has learned

    @classmethod
    def default_workers(cls) -> None:
        return None   # the cluster's threads, counted again as the run goes

    def __init__(self, workers: int | None, *,
                 initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = (), cluster: Any = None,
                 forward_logs: bool = True) -> None:
        distributed = import_distributed()
        self._initializer = initializer
        self._init: bytes | None = None
        if initializer is not None:   # before anything starts: nothing to clean up if it fails
            self._init = pickle_function((initializer, initargs), "the initializer")
        client, self._cluster, self._owns_client = connect(distributed, cluster, workers)
        # where finished tasks are handled (see _received)
        self._receiver = Receiver(client, distributed.client.done_callback)
        self._client = client
        self._distributed = distributed
        # Without workers=, conveyor counts the cluster's threads, and counts
        # them again as it goes (a cluster may grow or shrink during a run).
        self._follows = workers is None
        self._counted = time.monotonic()
        if workers is None:
            try:
                workers = max(1, sum(client.nthreads().values()))
            except BaseException:
                self._shutdown()
                raise
        self.workers = workers
        self._token = uuid.uuid4().hex
        # run_batch's `logs`: the client's levels go only to a cluster of conveyor's
        # own; on a cluster of the user's, its workers' levels stay as they are.
        self._logs: tuple[Any, ...] | None = None if not forward_logs else \
            (_logs.snapshot() if self._cluster is not None else None,)
        self._fns: dict[int, tuple[Callable[[Any], Any], str, bytes]] = {}
        self._probes = Probes(distributed.KilledWorker)   # see _probe
        self._suspects = Suspects()   # see _report_rerun
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._pending: deque[Job] = deque()
        self._running: dict[Job, None] = {}
        self._fetching = 0                  # finished tasks whose results are on their way
        self._closed = False
        self._cancelling = False            # closed with cancel=True: nothing runs again
        self._idle = threading.Condition(self._lock)
        self._sending = threading.local()   # see _send

    # -- protocol ------------------------------------------------------------
    def start(self) -> None:
        pass

    def prepare(self, fn: Callable[[Any], Any], where: str) -> None:
        self._fn_key(fn, f"{where}: the function")

    def submit(self, batch: Batch) -> None:
        # Completions reported while this call runs (this batch failing at once,
        # another one whose send fails) go through the receiver thread: the
        # caller may hold a lock its sink takes (Pool.submit does).
        self._sending.submitting = True
        try:
            self._submit(batch)
        finally:
            self._sending.submitting = False

    def _submit(self, batch: Batch) -> None:
        if self._follows:
            self._recount()
        try:
            self._fn_key(batch.fn, "the function")
        except NotPicklable as exc:   # not prepared (checked) before: fail the batch
            n = batch.limit
            self._deliver(Completion(batch, [fresh(exc) for _ in range(n)], list(range(n)), 0.0))
            return
        payload, n, error = pickle_items(batch.items[:batch.limit])
        if payload is None:   # the first item cannot be sent: fail it, the rest follow
            assert error is not None
            self._deliver(Completion(batch, [error], [0], 0.0))
            return
        with self._lock:
            if self._closed:
                reject = True
            else:
                reject = False
                self._pending.append(Job(batch, payload, n, alone=self._suspects.take(
                    batch.items[:n])))
                ready = take_ready(self._pending, self._running, self.workers)
        if reject:
            self._deliver(dropped(batch))
            return
        self._send(ready)

    def running(self) -> list[Running]:
        with self._lock:
            return [Running(j.batch, 0, j.since) for j in self._running
                    if j.batch.timed and not j.done]

    def expire(self, entry: Running, error: BaseException) -> bool:
        with self._lock:
            job = next((j for j in self._running if j.batch is entry.batch and not j.done),
                       None)
            if job is None:
                return False
            job.done = True
            job.worker_stuck = True   # its thread stays busy: keep the slot until it ends
        busy = time.monotonic() - job.since
        self._forget(job)
        self._deliver(Completion(entry.batch, [error], [0], busy))
        return True

    def cancel(self, batch: Batch) -> None:
        batch.cancelled = True
        with self._lock:
            queued = [j for j in self._pending if j.batch is batch]
            for j in queued:
                self._pending.remove(j)
            live = [j for j in self._running if j.batch is batch and not j.done]
        for j in queued:
            self._report_cancelled(j)
        if live:
            self._client.cancel([j.future for j in live if j.future is not None])

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            dropped_jobs: list[Job] = []
            live: list[Job] = []
            if cancel and not self._cancelling:
                self._cancelling = True
                dropped_jobs = list(self._pending)
                self._pending.clear()
                live = [j for j in self._running if not j.done]
        for j in dropped_jobs:
            self._report_lost(j)
        if live:
            # the cluster may be gone already: then nothing runs there
            with contextlib.suppress(Exception):
                self._client.cancel([j.future for j in live if j.future is not None])
            for j in live:
                self._report_lost(j)
        if not cancel:
            with self._lock:
                while self._pending or self._fetching or \
                        any(not j.done for j in self._running):
                    self._idle.wait(0.1)
        if wait:
            self._shutdown()
        else:   # Ctrl-C: stop the cluster without making the caller wait for it
            threading.Thread(target=self._shutdown, name="conveyor-dask-close",
                             daemon=False).start()

    # -- internals -------------------------------------------------------------
    def _recount(self) -> None:
        """Follow the cluster's thread count (the scheduler reads ``workers`` at
        each refill): workers that join later, or an adaptive cluster that grows,
        are used. The client's cached view of the scheduler, refreshed every few
        seconds, is read: no round trip. No thread at all keeps the last count."""
        now = time.monotonic()
        if now - self._counted < RECOUNT:
            return
        self._counted = now
        total = count_threads(self._client)
        if total is not None:
            self.workers = total

    def _shutdown(self) -> None:
        client, cluster = self._client, self._cluster
        if self._owns_client:
            self._owns_client = False
            with contextlib.suppress(Exception):
                client.close(timeout=10)
        if cluster is not None:
            self._cluster = None
            cluster.close()
        self._receiver.stop()   # after the client: what it cancelled was received

    def _fn_key(self, fn: Callable[[Any], Any], what: str) -> tuple[str, bytes]:
        entry = self._fns.get(id(fn))
        if entry is not None and entry[0] is fn:
            return entry[1], entry[2]
        data = pickle_function(fn, what)
        with self._lock:
            key = f"{self._token}-{next(self._keys)}"
            self._fns[id(fn)] = (fn, key, data)   # holding fn: its id stays its own
            if len(self._fns) > FN_CACHE:
                del self._fns[next(iter(self._fns))]
        return key, data

    def _send(self, jobs: list[Job]) -> None:
        # Reporting a job frees its slot, which sends what may go now: on this
        # thread, a call from inside this loop only adds to its work list (a
        # recursion per job would overflow the stack on a batch split in
        # thousands of items).
        work: deque[Job] | None = getattr(self._sending, "work", None)
        if work is not None:
            work.extend(jobs)
            return
        self._sending.work = work = deque(jobs)
        try:
            while work:
                self._send_one(work.popleft())
        finally:
            self._sending.work = None

    def _send_one(self, job: Job) -> None:
        batch = job.batch
        if batch.cancelled:
            self._report_cancelled(job)
            return
        if not job.sent:
            on_start = batch.on_start   # Pool.submit: once, as the call is first sent
            if on_start is not None and not on_start():
                self._report_cancelled(job)
                return
            batch.started = job.since
        job.sent = True
        try:
            key, fn_data = self._fn_key(batch.fn, "the function")
            poison = self._probes.poison(key)
            if poison is not None:   # see _probe
                self._report_failed(job, poison)
                return
            fut = self._client.submit(run_batch, self._token, key, fn_data, self._init,
                                      job.items, self._logs, pure=False)
            job.future = fut
            self._receiver.watch(fut, functools.partial(self._received, job))
        except Exception as exc:   # the client is closed, or the cluster is gone
            self._report_failed(job, exc)

    def _received(self, job: Job, fut: Any) -> None:
        try:
            self._on_done(job, fut)
        except BaseException as exc:   # fail that batch, not every later one
            self._report_failed(job, exc)

    def _deliver(self, done: Completion) -> None:
        if getattr(self._sending, "submitting", False):   # see submit
            self._receiver.hand_on(functools.partial(done.batch.sink, done))
        else:
            done.batch.sink(done)

    def _on_done(self, job: Job, fut: Any) -> None:
        """A dask future ended (dask's callback thread)."""
        if job.worker_stuck:   # expired earlier: its thread is free again
            if not job.restarting:   # else: once its worker is back (_restart_worker_of)
                self._forget_slot(job)
            return
        if job.done:   # reported already (e.g. dropped at close): free its slot
            self._free(job)
            return
        status = fut.status
        if status == "finished":
            # Free the worker's slot first: the next task is on its way while
            # this one's result is fetched (a round trip of its own).
            with self._lock:
                self._running.pop(job, None)
                self._fetching += 1
                ready = take_ready(self._pending, self._running, self.workers)
            try:
                self._send(ready)
                try:
                    ended, data, logs = fut.result()
                except Exception as exc:   # its worker died before the result was fetched?
                    self._report_rerun(job, exc)
                else:
                    if logs is not None:   # before the outcomes, as on processes
                        _logs.replay(logs, functools.partial(log_index, job))
                    self._finished(job, ended, data)
            finally:
                with self._lock:
                    self._fetching -= 1
                    self._idle.notify_all()
        elif status == "cancelled":
            if job.batch.cancelled:
                self._report_cancelled(job)
            else:   # cancelled by someone else (the cluster shut down)
                self._report_lost(job)
        elif status != "error":   # "lost": its result died with its worker
            self._report_rerun(job, None)
        else:
            error = fut.exception()
            if isinstance(error, self._distributed.KilledWorker):
                if not job.alone:   # dask blames every task a dead worker held
                    self._report_rerun(job, error, suspect=True)
                    return
                key, _ = self._fn_key(job.batch.fn, "the function")
                if key not in self._probes.verdicts:   # its items, or what every task loads?
                    threading.Thread(target=self._probe, args=(job, key, error),
                                     name="conveyor-dask-probe", daemon=True).start()
                    return
                if job.n > 1 and self._probes.verdicts[key] is None:
                    self._report_rerun(job, error, split=True)
                    return
            self._report_failed(job, error)

    def _probe(self, job: Job, key: str, error: BaseException) -> None:
        """A task killed its workers, also alone: run one with no items (alone
        still: ``job`` keeps its slot). If that kills its workers too, the
        function or the initializer does, as each worker loads it: every task
        of that function fails at once from now on, instead of each item
        killing workers in turn until dask gives up on it."""
        _, fn_data = self._fn_key(job.batch.fn, "the function")
        try:
            verdict = self._probes.run(self._client, self._token, key, fn_data, self._init)
        except BaseException:   # cancelled, the cluster is closing: no verdict
            self._report_failed(job, error)
            return
        if verdict is not None or job.n == 1:
            self._report_failed(job, verdict or error)
        else:
            self._report_rerun(job, error, split=True)

    def _finished(self, job: Job, ended: Ended, data: bytes) -> None:
        """A task's result arrived: report its outcomes."""
        if ended.status == Status.ITEMS_FAILED and job.n > 1:   # nothing ran: one by one
            if self._free(job, settle=True):
                self._deliver(Completion(job.batch, [], None, ended.busy,
                                         split=not job.batch.cancelled))
            return
        values, errors = outcomes_of(job, ended, data, self._initializer)
        self._report(job, values, errors, ended.busy)

    def _report_rerun(self, job: Job, cause: BaseException | None, *,
                      suspect: bool = False, split: bool = False) -> None:
        """``job``'s items ran, but their outcomes are lost (a result that died
        with its worker, a task blamed with a worker's death): the engine
        decides whether they run again. ``suspect``, ``split``: ``KilledWorker``
        blamed the task; the batch that holds them next runs alone on the
        cluster (``split``: the engine runs them one item per batch)."""
        if not self._free(job, settle=True):
            return
        batch = job.batch
        if batch.cancelled:
            self._deliver(Completion(batch, [], None, 0.0))
            return
        if self._cancelling:   # closed with cancel=True: nothing runs again
            self._deliver(dropped(batch))
            return
        if suspect or split or job.alone:
            with self._lock:
                self._suspects.mark(batch.items[:job.n])
        self._deliver(Completion(batch, [None] * job.n, None, time.monotonic() - job.since,
                                 rerun=(0, job.n), split=split, cause=cause))

    def _free(self, job: Job, *, settle: bool = False) -> bool:
        """Take ``job`` off the cluster's slots and send what may go now.

        ``settle``: also mark it reported; False if it was already (each batch
        gets one completion, whichever path reports it first).
        """
        with self._lock:
            if settle:
                if job.done:
                    return False
                job.done = True
            self._running.pop(job, None)
            if job.done and not job.worker_stuck and not job.restarting:
                # Its outcome is in hand: a future kept (by the batch, or by a
                # caller who still holds the results) would keep its task and
                # result on the cluster.
                job.future = None
            ready = take_ready(self._pending, self._running, self.workers)
            self._idle.notify_all()
        self._send(ready)
        return True

    def _report(self, job: Job, values: list[Any], errors: list[int], busy: float) -> None:
        if self._free(job, settle=True):
            self._deliver(Completion(job.batch, values, errors, busy))

    def _report_failed(self, job: Job, exc: BaseException | None) -> None:
        """The dask task failed (not the function: the cluster): its items fail."""
        errors = failures(job, exc, self._probes, self._init is not None,
                          self._distributed.KilledWorker)
        self._report(job, errors, list(range(job.n)), time.monotonic() - job.since)

    def _report_cancelled(self, job: Job) -> None:
        """A cancelled job: nothing ran (as far as the scheduler is told)."""
        if self._free(job, settle=True):
            self._deliver(Completion(job.batch, [], None, 0.0))

    def _report_lost(self, job: Job) -> None:
        if self._free(job, settle=True):
            self._deliver(dropped(job.batch))

    def _forget(self, job: Job) -> None:
        """An expired job: on a cluster conveyor started, restart the stuck worker."""
        if self._cluster is None or job.future is None:
            return
        job.restarting = True
        threading.Thread(target=self._restart_worker_of, args=(job,),
                         name="conveyor-dask-restart", daemon=True).start()

    def _restart_worker_of(self, job: Job) -> None:
        restart_worker(self._client, job.future)
        job.restarting = False
        self._forget_slot(job)

    def _forget_slot(self, job: Job) -> None:
        job.worker_stuck = False
        self._free(job)
