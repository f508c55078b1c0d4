"""``ProcessBackend``: the scheduler's calls, turned into jobs for the supervisor.

The backend pickles (a function once, kept for the last ``FN_CACHE``; a
batch's items in one pickle, or one per item for timed batches) and hands
the job to the :class:`~.supervisor.Supervisor`, whose state its other calls
(``running``, ``steal``, ``expire``, ``cancel``) read and change under the
supervisor's lock.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ..._wire import parent, records
from ..._wire.functions import fresh, pickle_function
from ..._wire.parent import check_arguments
from ...errors import NotPicklable
from .. import _mpshare
from .._base import Backend, Batch, Completion, Running, dropped, underlying
from .._capabilities import usable_cpus
from .jobs import Job
from .spawn import kill
from .supervisor import CANCEL_GRACE, Supervisor

__all__ = ["ProcessBackend"]

STEAL_WAIT = 0.25        # seconds steal() waits for the worker's answer (a late one is harmless)


class ProcessBackend(Backend):
    name = "process"
    options = Backend.options | {"max_tasks_per_worker", "forward_logs"}
    check_arguments = staticmethod(check_arguments)
    cannot_run = ("{where}: {fn} is a coroutine function; the {name!r} backend runs plain "
                  "functions. Use backend={instead!r}, or wrap it: "
                  "def run(x): return asyncio.run(fn(x)).")
    can_steal = True
    batch_target = 0.02     # a pipe round trip costs ~100 us: batches of tens of ms
    max_batch = 16384

    @classmethod
    def default_workers(cls) -> int:
        return usable_cpus()

    def __init__(self, workers: int, *, initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = (), max_tasks_per_worker: int | None = None,
                 forward_logs: bool = True) -> None:
        self.workers = workers
        init_bytes: bytes | None = None
        shared: _mpshare.Shared | None = None   # what initargs hold of multiprocessing's
        if initializer is not None:
            init_bytes, shared = _mpshare.pickle_initargs(initializer, initargs)
        self._sup = Supervisor(workers, initializer=initializer, init_bytes=init_bytes,
                               shared=shared, max_tasks=max_tasks_per_worker,
                               forward_logs=forward_logs)
        self._fn_lock = threading.Lock()
        # (wrapper type, id(fn)) -> (a reference to fn, key, pickle): see _fn_key
        self._fns: dict[tuple[type, int], tuple[Callable[[], object], int, bytes]] = {}
        self._keys = itertools.count(1)

    # -- protocol ------------------------------------------------------------
    def start(self) -> None:
        with self._sup.lock:
            self._sup.ensure_started()

    def warm_up(self) -> None:
        self._sup.warm_up()

    def prepare(self, fn: Callable[[Any], Any], where: str) -> None:
        self._fn_key(fn, f"{where}: the function")

    def submit(self, batch: Batch) -> None:
        try:
            key, fn_data = self._fn_key(batch.fn, "the function")
        except NotPicklable as exc:   # not prepared (checked) before: fail the batch
            n = batch.limit
            batch.sink(Completion(batch, [fresh(exc) for _ in range(n)], list(range(n)), 0.0))
            return
        items = batch.items[:batch.limit]
        payload, n, error = parent.pickle_items(
            items, parent.dumps_each if batch.timed else parent.dumps)
        if payload is None:   # the first item cannot be sent: fail it, the rest follow
            assert error is not None
            batch.sink(Completion(batch, [error], [0], 0.0))
            return
        sup = self._sup
        job = Job(sup.next_bid(), batch, key, fn_data, payload, n)
        with sup.lock:
            if sup.closed:
                reject = True
            else:
                reject = False
                sup.pending.append(job)
                sup.dispatch()
        if reject:
            batch.sink(dropped(batch))

    def running(self) -> list[Running]:
        out = []
        for p in list(self._sup.procs):
            try:
                job = p.jobs[0]
            except IndexError:
                continue
            q, d = p.q, p.d
            if not job.batch.timed or q is None or d is None:
                continue
            bid = q[0]
            pos = q[1]
            since = d[2]
            if bid != job.bid or q[1] != pos or q[0] != bid or pos < 0:
                continue   # not started, moving on, or sending its outcomes
            out.append(Running(job.batch, pos, since))
        return out

    def steal(self, batch: Batch) -> int | None:
        """Ask the worker for the items it has not started (see ``worker``)."""
        with self._sup.lock:
            for p in self._sup.procs:
                if p.jobs and p.jobs[0].batch is batch:
                    job = p.jobs[0]
                    break
            else:
                return None
            if p.reason is not None or p.cancel_at or job.steal_reply.is_set() \
                    or not p.steal(job.bid):
                return None
        # A reply that comes later than this is harmless: the batch then simply
        # ends early, and the scheduler sends what it did not run again.
        if not job.steal_reply.wait(STEAL_WAIT):
            return None
        k = job.stolen
        return k if k is not None and 0 < k < batch.limit else None

    def expire(self, entry: Running, error: BaseException) -> bool:
        with self._sup.lock:
            for p in self._sup.procs:
                if not p.jobs or p.jobs[0].batch is not entry.batch or p.reason is not None:
                    continue
                q = p.q
                if q is None or q[0] != p.jobs[0].bid or q[1] != entry.pos:
                    return False   # it finished that item meanwhile
                p.reason = (entry.pos, error)
                kill(p)
                return True
        return False

    def cancel(self, batch: Batch) -> None:
        batch.cancelled = True
        report = None
        sup = self._sup
        with sup.lock:
            for job in sup.pending:
                if job.batch is batch:
                    sup.pending.remove(job)
                    report = job
                    break
            else:
                for p in sup.procs:
                    if p.jobs and p.jobs[0].batch is batch and not p.cancel_at:
                        # It may finish soon; if not, its worker is killed.
                        p.cancel_at = time.monotonic() + CANCEL_GRACE
                        sup.wake()
        if report is not None:
            batch.sink(Completion(batch, [], None, 0.0))

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        self._sup.close(cancel=cancel, wait=wait)

    # -- functions -----------------------------------------------------------
    def _fn_key(self, fn: Callable[[Any], Any], what: str) -> tuple[int, bytes]:
        """``fn``'s key and pickle: made once per function, kept for the last 64.

        Keyed on the user's function inside conveyor's wrappers (each
        ``Pool.submit`` makes a new one), held weakly: the pool does not keep
        the functions it ran alive, and the entry goes with the function.
        """
        ident = (type(fn), id(underlying(fn)))
        entry = self._fns.get(ident)
        if entry is not None and entry[0]() is underlying(fn):
            return entry[1], entry[2]
        data = pickle_function(fn, what, _mpshare.cloudpickle_dumps)
        with self._fn_lock:
            entry = self._fns.get(ident)
            inner = underlying(fn)
            if entry is not None and entry[0]() is inner:
                return entry[1], entry[2]
            key = next(self._keys)
            try:
                ref: Callable[[], object] = weakref.ref(inner, functools.partial(
                    _forget, weakref.ref(self), ident))
            except TypeError:   # no weak references (a builtin): held, its id stays its own
                ref = functools.partial(_same, inner)
            self._fns[ident] = (ref, key, data)
            if len(self._fns) > records.FN_CACHE:
                del self._fns[next(iter(self._fns))]
        return key, data


def _forget(backend: weakref.ref[ProcessBackend], ident: tuple[type, int],
            _ref: object) -> None:
    """A function the backend held a pickle of is gone: so is its entry."""
    owner = backend()
    if owner is not None:
        owner._fns.pop(ident, None)


def _same(obj: object) -> object:
    return obj
