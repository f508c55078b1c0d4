"""``backend="dask"``: batches run as tasks on a dask.distributed cluster.

The engine's scheduler keeps every policy (the window, ordering, retries, the
error policy, timeouts' deadlines, rate, progress); this module only turns a
:class:`Batch` into one dask task and its result into a :class:`Completion`.

* **Streaming.** ``client.map`` wants the whole input and makes every task up
  front. Here the scheduler submits batches as its window allows, at most two
  per worker thread, and this backend puts them on the cluster (see
  ``_ready``); the rest wait here, where cancelling them costs nothing.
* **One task per batch.** Dask pays about a millisecond and a half per task,
  and a batch's round trip (client -> scheduler -> worker -> client) several
  more, so adaptive batching aims at ``batch_target`` (250 ms) per batch. The task
  carries the pickled function, the pickled items and the initializer as
  bytes (cloudpickle, the same encoding as the process backend), and returns
  the outcomes as bytes: dask never has to pickle a user's object itself, and
  a failing item, result or exception fails only its own task.
* **Lost workers.** Dask re-runs the task of a worker that dies (at least
  once: its items may run twice). A task that kills ``allowed-failures``
  workers fails with ``KilledWorker``; dask blames every task the dead workers
  held, so conveyor runs it once more alone on the cluster, and if it fails
  again a batch of several items is split into one task per item (each run
  alone), so that only the item that kills its worker fails, with
  ``WorkerCrashed``.
* **Retries** stay conveyor's (``retries=``, ``retry_on=``, backoff), not
  dask's ``retries=``: dask retries a whole task on any exception, conveyor
  retries the items that failed with the exceptions asked for.
* **Timeouts.** Dask cannot stop a running task. An overdue item fails with
  ``TaskTimeout`` at once; on a cluster conveyor started, the worker running it
  is restarted (as a worker process is killed on the process backend), on a
  cluster of yours it keeps its thread until it returns (as on threads), and
  its slot is not reused meanwhile.
* **Cancellation.** Queued batches are dropped; batches on the cluster are
  cancelled there (``client.cancel``); a cluster conveyor started is closed.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pickle import dumps as _dumps
from pickle import loads as _loads
from typing import Any

from .. import _logs, _worker
from ..errors import NotPicklable, WorkerCrashed
from ._base import (
    Backend,
    Batch,
    Completion,
    Running,
    dropped,
    init_failure,
    initializer_failed,
)
from .process import _fresh, _pickle_items, _rebuild_all, pickle_function

__all__ = ["INSTALL", "DaskBackend", "import_distributed", "run_batch"]

INSTALL = 'pip install "conveyor[dask]"'
FN_CACHE = 64          # functions a dask worker keeps unpickled (FIFO)
RECOUNT = 1.0          # seconds between counts of the cluster's threads
RECEIVER_EXIT = 10.0  # seconds the receiver thread may take to hand on what it holds
LOST_TRIES = 3         # times a task whose result died with its worker is run again
_NO_ITEMS = _dumps([], 5)
UNLOADABLE = -1.0      # run_batch's "busy" when its items could not be unpickled together
INIT_FAILED = -2.0     # ... when the initializer failed on that worker


def import_distributed() -> Any:
    """``distributed``, or an ImportError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"backend='dask' needs dask.distributed, which is not installed here: "
            f"{INSTALL} (or pip install \"dask[distributed]\")") from exc
    return distributed


# -- on the dask worker ---------------------------------------------------------
_fns: dict[str, Callable[[Any], Any]] = {}
_states: dict[str, tuple[dict[str, Any], tuple[Any, ...] | None]] = {}
_state_lock = threading.Lock()


def run_batch(token: str, fn_key: str, fn_data: bytes, init: bytes | None,
              items_data: bytes, logs: tuple[Any, ...] | None = None,
              ) -> tuple[float, bytes, bytes | None]:
    """Run one batch on a dask worker: ``(busy seconds, pickled outcomes, log records)``.

    ``token`` names the conveyor backend (one worker state and one initializer
    run per dask worker process and token); the outcomes are encoded as the
    process backend's (values, failure records). ``logs``: None, or
    ``(levels,)`` to capture what this call's thread logs (``levels``: see
    ``_logs.capture``); the records come back pickled (None if there are none).
    """
    if logs is None:
        return (*_run_batch(token, fn_key, fn_data, init, items_data, None), None)
    capture = _logs.capture(*logs)
    try:
        busy, data = _run_batch(token, fn_key, fn_data, init, items_data, capture)
    finally:
        records = _logs.release(capture)
    return busy, data, records


def _run_batch(token: str, fn_key: str, fn_data: bytes, init: bytes | None,
               items_data: bytes, capture: _logs.Capture | None) -> tuple[float, bytes]:
    fn = _fns.get(fn_key)
    if fn is None:
        try:
            fn = _loads(fn_data)
        except BaseException as exc:
            fn = _worker._unloadable(exc, "on the dask worker",
                                     "are its module and conveyor installed on the workers?")
        _fns[fn_key] = fn
        if len(_fns) > FN_CACHE:
            with contextlib.suppress(RuntimeError, StopIteration):   # another thread's eviction
                _fns.pop(next(iter(_fns)), None)
    state, init_record = _worker_state(token, init)
    try:
        items = _loads(items_data)
    except BaseException as exc:
        try:   # one item's exception that cannot be rebuilt fails that item only
            items = _worker.tolerant_loads(items_data)
            fn = _worker._skip_unbuildable(fn)
        except BaseException:   # the client sends the items one by one instead
            # (loads's error: it names what failed, the tolerant retry's may not)
            return UNLOADABLE, _dumps(([None], {}, [_record(0, exc)]), 5)
    if init_record is not None:   # the initializer failed on this worker: every item fails
        n = len(items)
        return INIT_FAILED, _dumps(([None] * n, {}, [(i, *init_record[1:])
                                                     for i in range(n)]), 5)
    reset = _worker._state_var.set(state)
    values: list[Any] = []
    records: list[tuple[Any, ...]] = []
    if capture is not None:
        capture.outcomes = values   # its length: the position of the item running
    append = values.append
    t0 = time.monotonic()
    try:
        for i, x in enumerate(items):
            try:
                append(fn(x))
            except BaseException as exc:  # the task's own failure, whatever its type
                append(None)
                records.append(_record(i, exc))
    finally:
        _worker._state_var.reset(reset)
    busy = time.monotonic() - t0
    return busy, _pack(values, records)


def _record(pos: int, exc: BaseException) -> tuple[Any, ...]:
    """``_worker._record``, also for an exception it cannot record: one that
    refuses to have its ``__traceback__`` cleared (a frozen dataclass's
    ``__setattr__`` raises; its pickle could not rebuild it either), or whose
    trial unpickling raises ``SystemExit``. A ``NotPicklable`` naming it, with
    the task's traceback, stands in for it."""
    try:
        return _worker._record(pos, exc)
    except BaseException as refusal:
        name = _worker._type_name(exc)
        stand_in = NotPicklable(
            f"the task raised {name}: {_worker._safe_str(exc)} -- that exception cannot "
            f"be sent back from the dask worker ({type(refusal).__name__}: "
            f"{_worker._safe_str(refusal)}), so this error stands in for it (its "
            "worker-side traceback is attached)", type_name=name)
        return _worker._record(pos, stand_in.with_traceback(exc.__traceback__))


_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


def _pack(values: list[Any], records: list[tuple[Any, ...]]) -> bytes:
    """``(values, packed, records)`` pickled: a value of a type other than the
    plain ones is pickled on its own into ``packed`` (position -> bytes), so
    that one the client cannot unpickle (a class from a module only the
    workers have) fails its own item, not the batch."""
    packed: dict[int, bytes] = {}
    failed = {r[0] for r in records}
    bad = False
    for i, value in enumerate(values):
        if type(value) in _PLAIN or i in failed:
            continue
        values[i] = None
        try:   # (a result's __reduce__ may raise anything, SystemExit too)
            packed[i] = _dumps(value, 5)
            continue
        except BaseException:
            pass
        try:   # e.g. a class defined in the task's own function
            packed[i] = _worker.cloudpickle_dumps(value)
        except BaseException as exc:
            records.append((i, _worker.KIND_RESULT, None, _worker._type_name(value),
                            f"{type(exc).__name__}: {_worker._safe_str(exc)}", ""))
            bad = True
    if bad:
        records.sort(key=lambda r: r[0])
    return _dumps((values, packed, records), 5)


def _unpack(data: bytes, n: int) -> tuple[list[Any], list[int]]:
    """:func:`_pack`'s outcomes, in the client: values, and the failed positions."""
    values, packed, records = _loads(data)   # plain values, bytes and records: it loads
    records = [_loadable(r) for r in records]
    unloadable = []
    for i, blob in packed.items():
        try:   # (a user's pickle may raise anything here, SystemExit too)
            values[i] = _loads(blob)
            continue
        except BaseException as exc:   # e.g. a module only the workers have
            error = exc
        try:   # an exception returned as a value, which its pickle cannot rebuild?
            value = _worker.tolerant_loads(blob)
        except BaseException:
            value = None
        if isinstance(value, _worker.Unbuildable):
            records.append((i, _worker.KIND_RESULT, None, value.type_name,
                            value.describe(), ""))
            continue
        unusable = NotPicklable(f"the result of this task could not be unpickled in this "
                                f"process (the dask client): {type(error).__name__}: {error}")
        unusable.__cause__ = error
        values[i] = unusable
        unloadable.append(i)
    values, errors = _rebuild_all(values, records, 0)
    return values, sorted(errors + unloadable) if packed else errors


def _log_index(job: _Job, pos: int) -> int | None:
    """The input index of the item a record was logged in (its position in the task)."""
    return _logs.item_index(job.batch, pos if job.parent is None else job.pos)


def _loadable(record: tuple[Any, ...]) -> tuple[Any, ...]:
    """A failure record whose exception unpickles here, or else one without it
    (``_rebuild`` then makes a ``NotPicklable`` that stands in for it): its
    unpickling may raise ``SystemExit``, which ``_rebuild`` would let through."""
    exc_bytes = record[2]
    if exc_bytes is None or record[1] != _worker.KIND_RAISED:
        return record
    try:
        _loads(exc_bytes)
    except BaseException:
        return (*record[:2], None, *record[3:])
    return record


def _worker_state(token: str, init: bytes | None) -> tuple[dict[str, Any],
                                                           tuple[Any, ...] | None]:
    """This dask worker's state dict for ``token``; the initializer runs on first use."""
    with _state_lock:
        entry = _states.get(token)
        if entry is None:
            state: dict[str, Any] = {}
            record = None
            if init is not None:
                reset = _worker._state_var.set(state)
                try:
                    initializer, initargs = _loads(init)
                    initializer(*initargs)
                except BaseException as exc:
                    record = _record(0, exc)
                finally:
                    _worker._state_var.reset(reset)
            entry = _states[token] = (state, record)
        return entry


# -- in the client ----------------------------------------------------------------
class _Job:
    """A batch (or one item of a split batch) and its dask future."""

    __slots__ = ("alone", "batch", "done", "future", "items", "lost", "n", "parent", "pos",
                 "restarting", "sent", "since", "worker_stuck")

    def __init__(self, batch: Batch, items: bytes, n: int, *,
                 parent: _Split | None = None, pos: int = 0) -> None:
        self.batch = batch
        self.items = items        # pickled
        self.n = n
        self.parent = parent      # the split batch this item belongs to
        self.pos = pos            # its position there
        self.future: Any = None
        self.since = 0.0
        self.done = False         # reported (or expired): a late result is ignored
        self.worker_stuck = False  # expired while running: keeps its slot until it ends
        self.alone = False        # suspected of killing workers: runs with nothing beside it
        self.lost = 0             # times its result was lost with its worker
        self.sent = False         # sent once (Pool.submit's future is running from then on)
        self.restarting = False   # expired: its worker is being restarted


class _Split:
    """A batch that killed its workers, rerun as one task per item."""

    __slots__ = ("batch", "busy", "errors", "finished", "jobs", "left", "values")

    def __init__(self, batch: Batch, n: int) -> None:
        self.batch = batch
        self.values: list[Any] = [None] * n
        self.errors: set[int] = set()
        self.finished: set[int] = set()   # positions with an outcome
        self.left = n
        self.busy = 0.0
        self.jobs: list[_Job] = []


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
        self._cluster: _HelperCluster | None = None   # a LocalCluster we started
        # A finished task's future goes from the client's event loop to this
        # backend's own thread (see _watch); None stops it.
        self._arrivals: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._receiver: threading.Thread | None = None
        self._done_callback = distributed.client.done_callback
        self._owns_client = False
        client: Any
        if cluster is None:
            try:
                client = distributed.Client.current()
            except ValueError:   # no client in this process: start a cluster for the run
                client = None
            if client is None:
                n = workers if workers is not None else _default_workers()
                self._cluster = _HelperCluster(n)
                try:
                    # results come straight from the workers, not through the
                    # scheduler (whose process shares the workers' cores)
                    client = distributed.Client(self._cluster.address, set_as_default=False,
                                                timeout="30s", direct_to_workers=True)
                except BaseException:
                    self._cluster.close()
                    raise
                self._owns_client = True
        elif isinstance(cluster, distributed.Client):
            client = cluster
        elif isinstance(cluster, str) or hasattr(cluster, "scheduler_address"):
            try:
                client = distributed.Client(cluster, set_as_default=False, timeout="10s")
            except OSError as exc:
                raise ConnectionError(
                    f"backend='dask': could not connect to the dask scheduler at {cluster!r}: "
                    f"{exc}") from exc
            self._owns_client = True
        else:
            raise TypeError(
                "backend='dask': cluster must be a distributed.Client, a scheduler address "
                f"('tcp://host:8786') or a cluster object (LocalCluster...), got {cluster!r}")
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
        # function key -> None (tasks without items run) or the KilledWorker of
        # one that did not (see _probe)
        self._probed: dict[str, BaseException | None] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._pending: deque[_Job] = deque()
        self._running: dict[_Job, None] = {}
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
            self._deliver(Completion(batch, [_fresh(exc) for _ in range(n)], list(range(n)), 0.0))
            return
        payload, n, error = _pickle_items(batch.items[:batch.limit])
        if payload is None:   # the first item cannot be sent: fail it, the rest follow
            assert error is not None
            self._deliver(Completion(batch, [error], [0], 0.0))
            return
        with self._lock:
            if self._closed:
                reject = True
            else:
                reject = False
                self._pending.append(_Job(batch, payload, n))
                ready = self._ready()
        if reject:
            self._deliver(dropped(batch))
            return
        self._send(ready)

    def running(self) -> list[Running]:
        with self._lock:
            return [Running(j.batch, 0, j.since) for j in self._running
                    if j.batch.timed and not j.done and j.parent is None]

    def expire(self, entry: Running, error: BaseException) -> bool:
        with self._lock:
            job = next((j for j in self._running if j.batch is entry.batch and not j.done
                        and j.parent is None), None)
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
            dropped_jobs: list[_Job] = []
            live: list[_Job] = []
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
        info = getattr(self._client, "_scheduler_identity", None)
        if not isinstance(info, dict):
            return
        total = info.get("total_threads")
        if total is None:   # older dask: per-worker entries only
            with contextlib.suppress(Exception):
                total = sum(w["nthreads"] for w in info.get("workers", {}).values())
        if isinstance(total, int) and total > 0:
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
        receiver = self._receiver
        if receiver is not None:   # after the client: what it cancelled was received
            self._arrivals.put(None)
            if receiver is not threading.current_thread():
                receiver.join(RECEIVER_EXIT)

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

    def _ready(self) -> list[_Job]:
        """Pending jobs to send now (lock held): they are moved to ``_running``.

        Two tasks per worker thread may be on the cluster: the second waits on
        its worker, so the worker never idles for a round trip between tasks.
        A timed task is sent only to a free thread (its clock starts as it is
        sent). A task under suspicion runs *alone*: when a worker dies, dask
        counts the death against every task that worker held, so a task that
        ends as ``KilledWorker`` runs once more with nothing beside it before
        conveyor believes it.
        """
        out: list[_Job] = []
        running = self._running
        live = [j for j in running if not j.worker_stuck]   # stuck ones wait on no one
        if any(j.alone for j in live):
            return out
        busy = len(running)
        now = time.monotonic()
        while self._pending:
            job = self._pending[0]
            if job.alone:
                if live or out:
                    break
                limit = busy + 1
            else:
                limit = self.workers if job.batch.timed else 2 * self.workers
            if busy >= limit:
                break
            self._pending.popleft()
            running[job] = None
            job.since = now   # running() may report it before _send gets to it
            busy += 1
            out.append(job)
            if job.alone:
                break
        return out

    def _send(self, jobs: list[_Job]) -> None:
        # Reporting a job frees its slot, which sends what may go now: on this
        # thread, a call from inside this loop only adds to its work list (a
        # recursion per job would overflow the stack on a batch split in
        # thousands of items).
        work: deque[_Job] | None = getattr(self._sending, "work", None)
        if work is not None:
            work.extend(jobs)
            return
        self._sending.work = work = deque(jobs)
        try:
            while work:
                self._send_one(work.popleft())
        finally:
            self._sending.work = None

    def _send_one(self, job: _Job) -> None:
        batch = job.batch
        if batch.cancelled:
            self._report_cancelled(job)
            return
        if not job.sent and job.parent is None:
            on_start = batch.on_start   # Pool.submit: once, as the call is first sent
            if on_start is not None and not on_start():
                self._report_cancelled(job)
                return
            batch.started = job.since
        job.sent = True
        try:
            key, fn_data = self._fn_key(batch.fn, "the function")
            poison = self._probed.get(key)
            if poison is not None:   # see _probe
                self._report_failed(job, poison)
                return
            fut = self._client.submit(run_batch, self._token, key, fn_data, self._init,
                                      job.items, self._logs, pure=False)
            job.future = fut
            self._watch(job, fut)
        except Exception as exc:   # the client is closed, or the cluster is gone
            self._report_failed(job, exc)

    def _watch(self, job: _Job, fut: Any) -> None:
        """Have :meth:`_on_done` called on this backend's receiver thread when
        ``fut`` ends.

        Not ``fut.add_done_callback``: its callbacks go from the client's event
        loop through a thread pool of dask's (``Future._cb_executor``), which
        the interpreter shuts down as it begins to exit, before the thread
        that closes the client after Ctrl-C has cancelled the futures; the
        loop then failed to hand them on ("cannot schedule new futures after
        interpreter shutdown", a second traceback after the KeyboardInterrupt).
        The same coroutine of dask's waits on the future here, and hands it to
        a queue, which never refuses.
        """
        self._client.loop.add_callback(self._done_callback, fut,
                                       functools.partial(self._arrive, job))

    def _arrive(self, job: _Job, fut: Any) -> None:
        # on the client's event loop: must not block
        self._hand_on(functools.partial(self._received, job, fut))

    def _hand_on(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the receiver thread (started on first use)."""
        if self._receiver is None:
            with self._lock:
                if self._receiver is None:
                    self._receiver = threading.Thread(
                        target=self._receive, name="conveyor-dask-results", daemon=True)
                    self._receiver.start()
        self._arrivals.put(call)

    def _receive(self) -> None:
        while True:
            call = self._arrivals.get()
            if call is None:
                return
            call()
            # Hold nothing while waiting: the call holds a dask future, and a
            # future held here keeps its task (and result) on the cluster.
            call = None

    def _received(self, job: _Job, fut: Any) -> None:
        try:
            self._on_done(job, fut)
        except BaseException as exc:   # fail that batch, not every later one
            self._report_failed(job, exc)

    def _deliver(self, done: Completion) -> None:
        if getattr(self._sending, "submitting", False):   # see submit
            self._hand_on(functools.partial(done.batch.sink, done))
        else:
            done.batch.sink(done)

    def _on_done(self, job: _Job, fut: Any) -> None:
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
                ready = self._ready()
            try:
                self._send(ready)
                try:
                    busy, data, logs = fut.result()
                except Exception as exc:   # its worker died before the result was fetched?
                    self._resubmit(job, exc)
                else:
                    if logs is not None:   # before the outcomes, as on processes
                        _logs.replay(logs, functools.partial(_log_index, job))
                    self._finished(job, busy, data)
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
            self._resubmit(job, None)
        else:
            error = fut.exception()
            if isinstance(error, self._distributed.KilledWorker):
                if not job.alone:   # dask blames every task a dead worker held
                    self._requeue(job, alone=True)
                    return
                key, _ = self._fn_key(job.batch.fn, "the function")
                if key not in self._probed:   # its items, or what every task loads?
                    threading.Thread(target=self._probe, args=(job, key, error),
                                     name="conveyor-dask-probe", daemon=True).start()
                    return
                if job.n > 1 and self._probed[key] is None:
                    self._split(job)
                    return
            self._report_failed(job, error)

    def _probe(self, job: _Job, key: str, error: BaseException) -> None:
        """A task killed its workers, also alone: run one with no items (alone
        still: ``job`` keeps its slot). If that kills its workers too, the
        function or the initializer does, as each worker loads it: every task
        of that function fails at once from now on, instead of each item
        killing workers in turn until dask gives up on it."""
        _, fn_data = self._fn_key(job.batch.fn, "the function")
        verdict: BaseException | None = None
        try:
            self._client.submit(run_batch, self._token, key, fn_data, self._init, _NO_ITEMS,
                                pure=False).result()
        except self._distributed.KilledWorker as exc:
            verdict = exc
        except BaseException:   # cancelled, the cluster is closing: no verdict
            self._report_failed(job, error)
            return
        self._probed[key] = verdict
        if verdict is not None or job.n == 1:
            self._report_failed(job, verdict or error)
        else:
            self._split(job)

    def _finished(self, job: _Job, busy: float, data: bytes) -> None:
        """A task's result arrived: report its outcomes."""
        if busy == UNLOADABLE and job.n > 1:   # send the items one by one instead
            self._split(job, alone=False)
            return
        values, errors = _unpack(data, job.n)
        if busy == UNLOADABLE:   # this one item: NotPicklable, as on the process backend
            cause = values[0]
            name = type(job.batch.items[job.pos]).__name__
            values = [NotPicklable(f"this item, a {name}, could not be unpickled on the dask "
                                   f"worker: {type(cause).__name__}: {cause}", type_name=name)]
            values[0].__cause__ = cause
        if busy == INIT_FAILED:   # as on the other backends: WorkerInitError per item
            first = values[0] if values and isinstance(values[0], BaseException) else \
                RuntimeError("the initializer failed")
            cause = initializer_failed(self._initializer, first)
            values = [init_failure(cause) for _ in values]
        self._report(job, values, errors, max(busy, 0.0))

    def _resubmit(self, job: _Job, error: BaseException | None) -> None:
        """The task ran but its result was lost with its worker: run it again (at
        least once, as dask does for a task whose worker dies), a few times at most."""
        job.lost += 1
        if job.lost > LOST_TRIES:
            self._report_failed(job, error)
            return
        self._requeue(job, alone=False)

    def _requeue(self, job: _Job, *, alone: bool) -> None:
        """Put a job that ended without its outcomes first in line again
        (``alone``: to run with nothing beside it on the cluster)."""
        with self._lock:
            if job.done:   # reported meanwhile (close(cancel=True))
                return
            self._running.pop(job, None)
            if self._cancelling:
                ready = None
            else:
                job.alone = job.alone or alone
                job.future = None
                self._pending.appendleft(job)
                ready = self._ready()
        if ready is None:
            self._report_lost(job)
            return
        self._send(ready)

    def _split(self, job: _Job, *, alone: bool = True) -> None:
        """Rerun a batch's items one task each: to find the one that kills its
        worker (``alone``: each with nothing beside it), or because they could
        not be unpickled together on the worker."""
        items = job.batch.items[:job.n]   # the originals: they pickled together before
        split = _Split(job.batch, job.n)
        subs = []
        for i, x in enumerate(items):
            payload, _, _ = _pickle_items([x])
            assert payload is not None   # the batch pickled as a whole
            sub = _Job(job.batch, payload, 1, parent=split, pos=i)
            sub.alone = alone   # one at a time: the item that kills its worker is the one
            split.jobs.append(sub)
            subs.append(sub)
        with self._lock:
            if job.done:   # reported meanwhile (close(cancel=True))
                return
            self._running.pop(job, None)
            job.done = True
            cancelled = job.batch.cancelled   # while it was on its way back: not found then
            if self._cancelling or cancelled:
                ready = None
            else:
                self._pending.extendleft(reversed(subs))
                ready = self._ready()
        if ready is None:
            self._deliver(Completion(job.batch, [], None, 0.0) if cancelled
                          else dropped(job.batch))
            return
        self._send(ready)

    def _free(self, job: _Job, *, settle: bool = False) -> bool:
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
            ready = self._ready()
            self._idle.notify_all()
        self._send(ready)
        return True

    def _report(self, job: _Job, values: list[Any], errors: list[int], busy: float) -> None:
        if not self._free(job, settle=True):
            return
        split = job.parent
        if split is None:
            self._deliver(Completion(job.batch, values, errors, busy))
            return
        with self._lock:
            split.values[job.pos] = values[0]
            if errors:
                split.errors.add(job.pos)
            split.finished.add(job.pos)
            split.busy += busy
            split.left -= 1
            last = split.left == 0
        if last:
            self._deliver(Completion(split.batch, split.values, sorted(split.errors),
                                     split.busy))

    def _report_failed(self, job: _Job, exc: BaseException | None) -> None:
        """The dask task failed (not the function: the cluster): its items fail."""
        errors = []
        loads = "" if self._init is None else " or the initializer"
        for _ in range(job.n):
            if any(exc is verdict for verdict in self._probed.values() if verdict):
                e: BaseException = WorkerCrashed(
                    f"the dask workers die as they load the function{loads}, even for a "
                    f"task without items: no task of that function can run: {exc}")
            elif isinstance(exc, self._distributed.KilledWorker):
                e = WorkerCrashed(
                    "the dask workers running this task died each time it ran, also alone "
                    f"on the cluster (dask gave up after its allowed-failures): {exc}")
            else:
                e = WorkerCrashed(f"the dask cluster could not run this task: "
                                  f"{type(exc).__name__}: {exc}")
            e.__cause__ = exc
            errors.append(e)
        self._report(job, errors, list(range(job.n)), time.monotonic() - job.since)

    def _report_cancelled(self, job: _Job) -> None:
        """A cancelled job: nothing ran (as far as the scheduler is told)."""
        if not self._free(job, settle=True):
            return
        if job.parent is None:
            self._deliver(Completion(job.batch, [], None, 0.0))
        else:
            self._settle_split(job.parent)

    def _report_lost(self, job: _Job) -> None:
        if not self._free(job, settle=True):
            return
        if job.parent is None:
            self._deliver(dropped(job.batch))
        else:
            self._settle_split(job.parent, lost=True)

    def _settle_split(self, split: _Split, *, lost: bool = False) -> None:
        """A split batch stops early: report the finished prefix once."""
        with self._lock:
            if split.left <= 0:
                return
            prefix = 0
            while prefix in split.finished:
                prefix += 1
            split.left = 0
        errors = sorted(p for p in split.errors if p < prefix)
        self._deliver(Completion(split.batch, split.values[:prefix], errors, split.busy,
                                 lost=lost))

    def _forget(self, job: _Job) -> None:
        """An expired job: on a cluster conveyor started, restart the stuck worker."""
        if self._cluster is None or job.future is None:
            return
        job.restarting = True
        threading.Thread(target=self._restart_worker_of, args=(job,),
                         name="conveyor-dask-restart", daemon=True).start()

    def _restart_worker_of(self, job: _Job) -> None:
        try:
            key = job.future.key
            where = [addr for addr, keys in self._client.processing().items() if key in keys]
            self._client.cancel([job.future], force=True)
            if where:   # returns once the workers are back
                self._client.restart_workers(where, raise_for_error=False)
        except Exception:   # the cluster is closing: its workers go with it
            pass
        job.restarting = False
        self._forget_slot(job)

    def _forget_slot(self, job: _Job) -> None:
        job.worker_stuck = False
        self._free(job)


# The LocalCluster conveyor starts lives in a helper interpreter of its own: dask
# starts worker processes with multiprocessing's "spawn", which re-imports the
# caller's __main__ in each of them (a script without the __name__ guard would
# start clusters recursively). The helper's __main__ is this code; it closes the
# cluster when its stdin ends: when conveyor closes it, or when the parent dies.
_HELPER = r"""
import json, logging, sys
cfg = json.loads(sys.argv[1])
sys.path[:] = cfg["path"]
import dask
from distributed import LocalCluster
# A cluster for throughput on this machine, whose cores its workers' tasks use:
# what wakes up on a timer takes a core (and the GIL) from a task. Dask's
# statistical profiler samples every worker thread's stack every 10 ms; the
# event-loop health check runs every 20 ms in each process; the system and
# memory monitors feed a dashboard, which nobody can see here (its address is
# not shown). Off, or at a slower pace.
dask.config.set({
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
})
# (the scheduler's HTTP server, /health and /metrics, runs anyway: on a free
# port, not on the 8787 a cluster of the user's may want)
cluster = LocalCluster(n_workers=cfg["n"], threads_per_worker=1, processes=True,
                       dashboard_address=":0", scheduler_kwargs={"dashboard": False},
                       silence_logs=logging.ERROR)
sys.stdout.write(cluster.scheduler_address + "\n")
sys.stdout.flush()
try:
    sys.stdin.read()
finally:
    cluster.close(timeout=10)
"""
HELPER_START = 120.0   # seconds the helper may take to report its scheduler's address
HELPER_EXIT = 15.0     # seconds it may take to close its cluster before it is killed


class _HelperCluster:
    """A LocalCluster (processes, one thread each) in a helper process of ours."""

    def __init__(self, n_workers: int) -> None:
        import json
        import os
        import subprocess
        import sys
        import tempfile

        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - open as long as the helper runs
        cfg = json.dumps({"n": n_workers, "path": [os.path.abspath(p) if p else os.getcwd()
                                                    for p in sys.path]})
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _HELPER, cfg], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._err, start_new_session=True)
        line = self._read_address()
        if not line.startswith(("tcp://", "inproc://", "tls://", "ucx://")):
            self.close()
            self._err.seek(0)
            tail = self._err.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError("backend='dask': the LocalCluster conveyor starts did not come "
                               "up: " + (" / ".join(tail) or "no address reported"))
        self.address = line

    def _read_address(self) -> str:
        out: list[str] = []
        stdout = self._proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: out.append(stdout.readline().decode()),
                                  name="conveyor-dask-start", daemon=True)
        reader.start()
        reader.join(HELPER_START)
        return out[0].strip() if out else ""

    def close(self, timeout: float = HELPER_EXIT) -> None:
        import os
        import signal
        import subprocess

        proc = self._proc
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        with contextlib.suppress(OSError):   # the helper and whatever is left of its cluster
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        self._err.close()


def _default_workers() -> int:
    from . import usable_cpus

    return usable_cpus()
