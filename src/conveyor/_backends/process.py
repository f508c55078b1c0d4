"""backend="process": worker processes that conveyor starts and supervises itself.

::

    scheduler --submit--> pending jobs --pipe--> worker process 1..N
       ^                     |  (pickled batch)    | for x in items: fn(x)
       |               supervisor thread <--pipe---+ (pickled outcomes)
       +--batch.sink--  (selector on result pipes and pidfds: results, deaths,
                         kills for timeouts and cancellation, replacements)

Not ``concurrent.futures.ProcessPoolExecutor``: one worker that dies breaks
the whole executor, and a hung task cannot be stopped. Here each worker is
watched on its own: a death fails only the task it was running
(``WorkerCrashed``), and a worker whose task overruns ``timeout=`` is killed
with its whole process group and replaced.

**Start method.** Each worker is a fresh interpreter (``subprocess`` with
``sys.executable``), not a ``fork`` of the parent: forking a process that
runs threads (conveyor's dispatcher, the user's) can copy a lock in its held
state and deadlock the child. Unlike multiprocessing's ``spawn`` and
``forkserver``, the worker never re-imports the parent's ``__main__``, so a
script without the ``if __name__ == "__main__"`` guard, and a notebook, work:
functions and arguments travel by cloudpickle (lambdas, closures, functions
defined in ``__main__`` are sent by value); multiprocessing's queues, locks,
shared memory and Manager proxies get there as with ``ProcessPoolExecutor``
(see ``_mpshare``: initargs are pickled as for a process being started,
their descriptors passed to every worker). A worker loads only
``conveyor/_worker.py`` (not the conveyor package), so it starts in about the
time of a bare interpreter. Workers start lazily, when a batch is waiting.

**What is re-run.** A worker reports a batch's outcomes when the batch ends.
If it dies during a batch (crash, timeout kill), the item it was running fails,
the items after it had not run and run elsewhere, and the items *before* it
had run but their outcomes died with the worker: they run again. So a task
runs at least once, and twice only when its worker dies in the same batch
after it (adaptive batching keeps batches near ``batch_target`` long).
Faults in pickles re-run nothing: a batch's items travel in one pickle (one
memo: fast), and if a worker cannot unpickle it, or dies doing so, none has
run and the batch goes again one pickle per item, so the bad one fails alone
(timed batches always go so: unpickling an item is part of its task).
Results travel in one pickle too; if the parent cannot unpickle it, the
worker, which kept them, sends them again one by one (see ``_worker``).

**Timeouts and crash attribution** without a message per item: a shared
memory page per worker holds (batch id, item position, start time), written by
the worker before each item (see ``conveyor._worker``).

**Selectors, not ``multiprocessing.connection.wait``**: that function builds
a new selector at every call; the supervisor keeps one registration per pipe
and per pidfd (the process sentinel on Linux; elsewhere the end of file on the
result pipe, plus a periodic ``poll``) for the life of each worker.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import itertools
import mmap
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import weakref
from collections.abc import Callable
from typing import Any

from .. import _logs, _worker
from ..errors import NotPicklable, RemoteTraceback, WorkerCrashed, WorkerInitError
from . import _mpshare
from ._base import (
    Backend,
    Batch,
    Completion,
    Running,
    dropped,
    init_failure,
    initializer_failed,
    underlying,
    wait_event,
)
from ._capabilities import usable_cpus

__all__ = ["ProcessBackend", "check_arguments", "pickle_function"]

BOOTSTRAP = (
    "import sys\n"
    "from importlib.util import module_from_spec, spec_from_file_location\n"
    f"s = spec_from_file_location({_worker.ALIAS!r}, sys.argv[1])\n"
    "m = module_from_spec(s)\n"
    "sys.modules[s.name] = sys.modules['conveyor._worker'] = m\n"
    "s.loader.exec_module(m)\n"
    "m.main()\n"
)

STEAL_WAIT = 0.25        # seconds steal() waits for the worker's answer (a late one is harmless)
CANCEL_GRACE = 0.25      # seconds a cancelled batch may take to finish before its worker is killed
EXIT_GRACE = 2.0         # seconds idle workers get to exit at close before SIGKILL
START_FAILURES = 3       # workers dying before running anything before we blame the batch
POLL = 0.5               # seconds between liveness polls where there are no pidfds
PIPE_SIZE = 1 << 20      # bytes: we ask the kernel for pipes this large (Linux)

_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)

_live_backends: weakref.WeakSet[ProcessBackend] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for backend in list(_live_backends):
        backend.close(cancel=True, wait=True)


class _ByValue(Exception):
    pass


_main_aware: Any = None


def _dumps(obj: object) -> bytes:
    """Pickle with the C pickler; cloudpickle for what it cannot do, or should not.

    The C pickler would send an instance of a class defined in ``__main__`` by
    reference, and a worker's ``__main__`` is not the user's: those go to
    cloudpickle, which sends the class by value. Exact ints, strs, lists,
    dicts... never reach ``reducer_override``, so plain data pays nothing.
    Objects of multiprocessing's (``shared``) go to ``_mpshare.reduce``.
    """
    import io

    shared, seen = _mpshare.classes()
    try:
        with io.BytesIO() as f:
            _pickler(f, shared, seen).dump(obj)
            return f.getvalue()
    except Exception:
        return _mpshare.cloudpickle_dumps(obj) if shared else _worker.cloudpickle_dumps(obj)


def _pickler(f: Any, shared: tuple[type, ...], seen: dict[type, bool]) -> Any:
    """A ``_main_aware_pickler`` on ``f`` that knows multiprocessing's classes."""
    pickler = _main_aware_pickler()(f, 5)
    pickler.shared, pickler.seen = shared, seen
    return pickler


def _main_aware_pickler() -> Any:
    global _main_aware
    if _main_aware is None:
        import pickle

        class MainAware(pickle.Pickler):
            shared: tuple[type, ...] = ()
            seen: dict[type, bool] = {}  # noqa: RUF012 - replaced at each use

            def reducer_override(self, obj: Any) -> Any:
                cls = type(obj)
                shared = self.seen.get(cls)
                if shared is None:
                    shared = self.seen[cls] = issubclass(cls, self.shared)
                if shared:
                    rv = _mpshare.reduce(obj, None)
                    if rv is not NotImplemented:
                        return rv
                try:
                    module = getattr(obj, "__module__", None)
                except Exception:
                    module = None
                if module == "__main__":
                    raise _ByValue
                return NotImplemented

        _main_aware = MainAware
    return _main_aware



def _dumps_each(items: list[Any]) -> list[bytes]:
    """The items of a job, one pickle per item.

    A worker unpickles items pickled one by one as each starts (see
    ``_worker``), so one whose unpickling fails, exits, crashes the worker or
    hangs (timed, it is part of its task) fails only itself. Dearer than one
    pickle of all: for timed jobs, and jobs whose one pickle did not unpickle.
    """
    shared, seen = _mpshare.classes()
    out = []
    for blob, exc in _worker.dumps_each(items, lambda f, _protocol: _pickler(f, shared, seen)):
        if exc is not None:
            raise exc   # _pickle_items finds which item, and sends the ones before it
        out.append(blob)
    return out


def pickle_function(fn: object, what: str,
                    dumps: Callable[[object], bytes] = _worker.cloudpickle_dumps) -> bytes:
    """Pickle ``fn`` with ``dumps``; a ``NotPicklable`` that names the culprit if it can't be."""
    try:
        return dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise NotPicklable(
            f"{what} {name} cannot be sent to worker processes: {type(exc).__name__}: {exc}"
            f"{_culprit(fn)}. Create what it needs inside the function (or in the pool's "
            "initializer, kept in conveyor.worker_state()), or pass picklable arguments.",
            type_name=type(fn).__name__) from exc


def check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> None:
    """Raise ``NotPicklable`` naming the first argument that cannot be sent."""
    try:
        _dumps((args, kwargs))
        return
    except Exception as exc:
        error = exc
    parts = [(f"argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in parts:
        try:
            _dumps(value)
        except Exception as exc:
            raise NotPicklable(
                f"{where}: {label} ({value!r:.80}), a {type(value).__name__}, cannot be sent "
                f"to a worker process: {type(exc).__name__}: {exc}",
                type_name=type(value).__name__) from exc
    raise NotPicklable(f"{where}: the arguments cannot be sent to a worker process: "
                       f"{type(error).__name__}: {error}") from error


def _culprit(fn: object) -> str:
    """Which object that ``fn`` refers to cannot be pickled (best effort)."""
    parts: list[tuple[str, object]] = []
    if isinstance(fn, functools.partial):
        parts += [("the partial's function", fn.func)]
        parts += [(f"argument {i} of the partial", a) for i, a in enumerate(fn.args)]
        parts += [(f"keyword {k!r} of the partial", v) for k, v in fn.keywords.items()]
    elif isinstance(fn, types.MethodType):
        parts += [("the object the method is bound to", fn.__self__)]
    func = fn.__func__ if isinstance(fn, types.MethodType) else fn
    if isinstance(func, types.FunctionType):
        code = func.__code__
        for name, cell in zip(code.co_freevars, func.__closure__ or (), strict=False):
            with contextlib.suppress(ValueError):   # an empty cell
                parts.append((f"the variable {name!r} it closes over", cell.cell_contents))
        for name in _names(code):
            if name in func.__globals__:
                parts.append((f"the global {name!r}", func.__globals__[name]))
        for i, value in enumerate(func.__defaults__ or ()):
            parts.append((f"default argument {i}", value))
    elif not isinstance(fn, (functools.partial, types.MethodType)):
        for name, value in getattr(fn, "__dict__", {}).items():
            parts.append((f"its attribute {name!r}", value))
    for label, obj in parts:
        try:
            _worker.cloudpickle_dumps(obj)
        except Exception as exc:
            return (f" (it refers to {label}, a {type(obj).__name__}, which cannot be "
                    f"pickled: {exc})")
    return ""


def _names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _names(const)
    return names


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "it stopped responding"
    if returncode >= 0:
        return f"it exited with code {returncode}"
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hint = {signal.SIGKILL: ", as the out-of-memory killer does",
            signal.SIGSEGV: " (a segmentation fault)",
            signal.SIGABRT: " (an abort)"}.get(signal.Signals(signum), "") \
        if signum in signal.valid_signals() else ""
    return f"it was killed by {name}{hint}"


class _Job:
    __slots__ = ("batch", "bid", "fn_data", "items", "key", "sent", "size", "steal_reply",
                 "stolen")

    def __init__(self, bid: int, batch: Batch, key: int, fn_data: bytes,
                 items: bytes | list[bytes], size: int) -> None:
        self.bid = bid
        self.batch = batch
        self.key = key          # which function (see ProcessBackend._fn_key)
        self.fn_data = fn_data  # its pickle, sent to workers that do not hold it yet
        self.steal_reply = threading.Event()
        self.stolen: int | None = None
        self.items = items      # the pickled items: one pickle, or one per item
        self.size = size        # how many
        self.sent = False       # sent once: batch.on_start was called (then never again)


class _Proc:
    """One worker process and the parent's end of its pipes (one job at a time)."""

    __slots__ = (
        "cancel_at",
        "ctl",
        "d",
        "jobs",
        "known",
        "life_w",
        "outbuf",
        "pid",
        "pidfd",
        "popen",
        "q",
        "ran",
        "reason",
        "result_r",
        "retiring",
        "slot",
        "task",
        "tasks",
        "writing",
    )

    def __init__(self) -> None:
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.result_r = self.life_w = -1
        # Sockets, not pipes, to the worker: send(MSG_NOSIGNAL) to a dead worker
        # is an error, never a SIGPIPE (which kills a program that restored SIG_DFL).
        self.task: socket.socket | None = None
        self.ctl: socket.socket | None = None
        self.outbuf: list[memoryview] = []       # what the task socket did not take yet
        self.writing = False                     # registered for EVENT_WRITE
        self.pidfd = -1
        self.slot: mmap.mmap | None = None
        self.q: memoryview[int] | None = None
        self.d: memoryview[float] | None = None
        self.jobs: collections.deque[_Job] = collections.deque()   # the job it runs
        self.known: dict[int, None] = {}       # function keys the worker holds (FIFO)
        self.tasks = 0                          # items sent, for max_tasks_per_worker
        self.retiring = False                   # will exit after its last job
        self.ran = False                        # reported at least one batch
        self.reason: tuple[int, BaseException] | None = None   # killed to expire (pos, error)
        self.cancel_at = 0.0                    # kill if still on a cancelled batch then


class _Unstarted:
    """``batch.it`` of a batch sent to a worker: how many of its items wait."""

    __slots__ = ("job", "proc")

    def __init__(self, proc: _Proc, job: _Job) -> None:
        self.proc = proc
        self.job = job

    def __iter__(self) -> _Unstarted:
        return self

    def __next__(self) -> Any:
        raise StopIteration   # the items are in the worker

    def __length_hint__(self) -> int:
        q = self.proc.q
        if q is None or q[0] != self.job.bid or self.job.steal_reply.is_set() or q[1] < 0:
            return 0   # not started, or in a phase outside its items (see _worker.POS_*)
        return max(0, self.job.size - q[1] - 1)


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
        self._forward_logs = forward_logs   # the workers' log records: see conveyor._logs
        self._initializer = initializer
        self._init_bytes: bytes | None = None
        self._shared: _mpshare.Shared | None = None   # what initargs hold of multiprocessing's
        if initializer is not None:
            self._init_bytes, self._shared = _mpshare.pickle_initargs(initializer, initargs)
        self._max_tasks = max_tasks_per_worker
        self._lock = threading.Lock()
        self._fn_lock = threading.Lock()
        # (wrapper type, id(fn)) -> (a reference to fn, key, pickle): see _fn_key
        self._fns: dict[tuple[type, int], tuple[Callable[[], object], int, bytes]] = {}
        self._keys = itertools.count(1)
        self._bids = itertools.count(1)
        self._pending: collections.deque[_Job] = collections.deque()
        self._deferred: list[Completion] = []   # found under the lock, reported after it
        self._procs: list[_Proc] = []
        self._start_failures = 0
        self._closed = False
        self._stopped = threading.Event()      # supervisor ended: every worker reaped
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = -1, -1
        self._supervisor: threading.Thread | None = None
        self._worker_path = _worker.__file__

    # -- protocol ------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._ensure_supervisor()

    def warm_up(self) -> None:
        with self._lock:
            self._ensure_supervisor()
            while len(self._procs) < self.workers and not self._closed:
                self._spawn()

    def prepare(self, fn: Callable[[Any], Any], where: str) -> None:
        self._fn_key(fn, f"{where}: the function")

    def submit(self, batch: Batch) -> None:
        try:
            key, fn_data = self._fn_key(batch.fn, "the function")
        except NotPicklable as exc:   # not prepared (checked) before: fail the batch
            n = batch.limit
            batch.sink(Completion(batch, [_fresh(exc) for _ in range(n)], list(range(n)), 0.0))
            return
        items = batch.items[:batch.limit]
        payload, n, error = _pickle_items(items, _dumps_each if batch.timed else _dumps)
        if payload is None:   # the first item cannot be sent: fail it, the rest follow
            assert error is not None
            batch.sink(Completion(batch, [error], [0], 0.0))
            return
        job = _Job(next(self._bids), batch, key, fn_data, payload, n)
        with self._lock:
            if self._closed:
                reject = True
            else:
                reject = False
                self._pending.append(job)
                self._dispatch()
        if reject:
            batch.sink(dropped(batch))

    def running(self) -> list[Running]:
        out = []
        for p in list(self._procs):
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
        """Ask the worker for the items it has not started (see ``_worker``)."""
        with self._lock:
            for p in self._procs:
                if p.jobs and p.jobs[0].batch is batch:
                    job = p.jobs[0]
                    break
            else:
                return None
            if p.reason is not None or p.cancel_at or job.steal_reply.is_set() \
                    or p.ctl is None:
                return None
            try:
                p.ctl.send(b"S" + job.bid.to_bytes(8, "little", signed=True), _NOSIGNAL)
            except OSError:   # gone, or its control thread is not reading: no steal
                return None
        # A reply that comes later than this is harmless: the batch then simply
        # ends early, and the scheduler sends what it did not run again.
        if not job.steal_reply.wait(STEAL_WAIT):
            return None
        k = job.stolen
        return k if k is not None and 0 < k < batch.limit else None

    def expire(self, entry: Running, error: BaseException) -> bool:
        with self._lock:
            for p in self._procs:
                if not p.jobs or p.jobs[0].batch is not entry.batch or p.reason is not None:
                    continue
                q = p.q
                if q is None or q[0] != p.jobs[0].bid or q[1] != entry.pos:
                    return False   # it finished that item meanwhile
                p.reason = (entry.pos, error)
                _kill(p)
                return True
        return False

    def cancel(self, batch: Batch) -> None:
        batch.cancelled = True
        report = None
        with self._lock:
            for job in self._pending:
                if job.batch is batch:
                    self._pending.remove(job)
                    report = job
                    break
            else:
                for p in self._procs:
                    if p.jobs and p.jobs[0].batch is batch and not p.cancel_at:
                        # It may finish soon; if not, its worker is killed.
                        p.cancel_at = time.monotonic() + CANCEL_GRACE
                        self._wake()
        if report is not None:
            batch.sink(Completion(batch, [], None, 0.0))

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        lost: list[_Job] = []
        with self._lock:
            self._closed = True
            if cancel:   # also when already closed: close() then Ctrl-C, atexit
                lost = list(self._pending)
                self._pending.clear()
                for p in self._procs:
                    if p.jobs:
                        p.cancel_at = time.monotonic()   # kill now
                        for job in p.jobs:
                            job.batch.cancelled = True
            self._wake()
            supervisor = self._supervisor
        for job in lost:
            job.batch.sink(dropped(job.batch))
        if supervisor is None:
            self._release_shared()
            self._stopped.set()
            return
        if wait and supervisor is not threading.current_thread():
            wait_event(self._stopped)

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
            if len(self._fns) > _worker.FN_CACHE:
                del self._fns[next(iter(self._fns))]
        return key, data

    # -- dispatching (lock held) -----------------------------------------------
    def _ensure_supervisor(self) -> None:
        if self._supervisor is not None or self._closed:
            return
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                            name="conveyor-process-supervisor")
        self._supervisor.start()
        _live_backends.add(self)

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")

    def _dispatch(self) -> None:
        """Hand pending jobs to idle workers, starting workers up to ``workers``.

        One job per worker: a job written into the pipe of a busy worker could
        not be taken back if the item it runs hangs, so none is queued there.
        The round trip between two jobs is small beside a batch's ``batch_target``.
        """
        pending = self._pending
        while pending:
            target = None
            for p in self._procs:
                if not p.jobs and not p.retiring and p.cancel_at == 0.0:
                    target = p
                    break
            if target is None and \
                    sum(1 for p in self._procs if not p.retiring) < self.workers:
                self._ensure_supervisor()
                target = self._spawn()
            if target is None:
                return
            job = pending.popleft()
            if job.batch.cancelled:   # its run stopped meanwhile: not sent at all
                self._deferred.append(Completion(job.batch, [], None, 0.0))
                self._wake()
                continue
            if not job.sent:
                # Once per job: one requeued because its worker died before
                # starting it has started already for Pool.submit's future
                # (whose set_running_or_notify_cancel raises the second time).
                job.sent = True
                refused = _refused(job.batch)
                if refused is not None:
                    self._deferred.append(refused)
                    self._wake()   # the supervisor reports it
                    continue
            self._send(target, job)

    def _send(self, p: _Proc, job: _Job) -> None:
        import pickle

        fn_bytes = None
        if job.key not in p.known:
            fn_bytes = job.fn_data
            p.known[job.key] = None
            if len(p.known) > _worker.FN_CACHE:
                del p.known[next(iter(p.known))]
        message = pickle.dumps((job.bid, job.key, fn_bytes, job.batch.timed, job.items), 5)
        batch = job.batch
        batch.out, batch.errs = [], []   # filled as outcomes come (harvest)
        batch.it = _Unstarted(p, job)    # for the scheduler: how many wait (steal)
        batch.started = time.monotonic()
        p.jobs.append(job)
        p.tasks += job.size
        if self._max_tasks is not None and p.tasks >= self._max_tasks:
            p.retiring = True
        self._write(p, message)

    def _write(self, p: _Proc, payload: bytes) -> None:
        """Send a message to ``p`` without blocking (lock held).

        A worker reads its socket only between batches (or after its
        initializer), so what does not fit is left to the supervisor thread,
        which writes it when the socket is writable: nobody ever waits here.
        """
        data = memoryview(len(payload).to_bytes(_worker.HEADER, "little") + payload)
        if p.task is None:
            return
        if not p.outbuf:
            try:
                data = data[p.task.send(data, _NOSIGNAL):]
            except BlockingIOError:
                pass
            except OSError:
                return   # it is gone: its death hands the job back
            if not data:
                return
        p.outbuf.append(data)
        self._wake()

    def _write_more(self, p: _Proc) -> None:
        """The supervisor: ``p``'s socket is writable (lock held)."""
        while p.outbuf and p.task is not None:
            data = p.outbuf[0]
            try:
                data = data[p.task.send(data, _NOSIGNAL):]
            except BlockingIOError:
                return
            except OSError:
                p.outbuf.clear()
                break
            if data:
                p.outbuf[0] = data
                return
            p.outbuf.pop(0)
        self._unregister_write(p)

    def _close_task(self, p: _Proc) -> None:
        self._unregister_write(p)
        p.outbuf.clear()
        _close_sock(p, "task")

    def _unregister_write(self, p: _Proc) -> None:
        if p.writing:
            p.writing = False
            assert self._selector is not None
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(p.task.fileno() if p.task is not None else -1)

    def _spawn(self) -> _Proc:
        p = _Proc()
        p.task, task_child = socket.socketpair()
        p.ctl, ctl_child = socket.socketpair()
        task_r, ctl_r = task_child.detach(), ctl_child.detach()
        p.task.setblocking(False)
        p.ctl.setblocking(False)
        p.result_r, result_w = os.pipe()
        life_r, p.life_w = os.pipe()
        for fd in (p.result_r, result_w):
            with contextlib.suppress(OSError, AttributeError):
                import fcntl

                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        slot_fd = _shared_page()
        p.slot = mmap.mmap(slot_fd, mmap.PAGESIZE)
        p.q = memoryview(p.slot).cast("q")
        p.d = memoryview(p.slot).cast("d")
        p.q[0] = -1
        shared_fds = self._shared.fds if self._shared is not None else ()
        try:
            p.popen = subprocess.Popen(
                [sys.executable, "-u", "-c", BOOTSTRAP, self._worker_path,
                 str(task_r), str(result_w), str(life_r), str(slot_fd), str(ctl_r)],
                pass_fds=(task_r, result_w, life_r, slot_fd, ctl_r, *shared_fds),
                stdin=subprocess.DEVNULL,
                start_new_session=True)   # its own process group: killed as one
        finally:
            for fd in (task_r, result_w, life_r, slot_fd, ctl_r):
                os.close(fd)
        p.pid = p.popen.pid
        with contextlib.suppress(OSError, AttributeError):
            p.pidfd = os.pidfd_open(p.pid)
        self._procs.append(p)
        assert self._selector is not None
        self._selector.register(p.result_r, selectors.EVENT_READ, (p, "result"))
        if p.pidfd >= 0:
            self._selector.register(p.pidfd, selectors.EVENT_READ, (p, "exit"))
        init = (list(sys.path), self._init_bytes, self._max_tasks,
                _logs.snapshot() if self._forward_logs else None)
        self._write(p, _dumps(init))
        return p

    # -- the supervisor thread -------------------------------------------------
    def _supervise(self) -> None:
        try:
            self._watch()
        finally:
            # Under the lock: steal() and _wake() write to these descriptors,
            # and a closed number may be reused by the next file opened.
            with self._lock:
                self._closed = True
                procs = list(self._procs)
                self._procs.clear()
                for p in procs:
                    _kill(p)
                    self._reap(p)
                wake = (self._wake_r, self._wake_w)
                self._wake_r = self._wake_w = -1
                for fd in wake:
                    os.close(fd)
                # Normally nothing is left here; after a failure of this thread,
                # the runs waiting for these batches end (PoolClosed) instead of hanging.
                orphans = [job for p in procs for job in p.jobs] + list(self._pending)
                self._pending.clear()
            for job in orphans:
                _deliver(dropped(job.batch))
            assert self._selector is not None
            self._selector.close()
            _live_backends.discard(self)
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
            with self._lock:
                idle = self._closed and not self._pending and \
                    not any(p.jobs for p in self._procs)
                if idle and not exiting_since:
                    exiting_since = time.monotonic()
                    for p in self._procs:
                        self._close_task(p)   # end of file: the worker exits
                if idle and not self._procs:
                    return
                for p in self._procs:
                    if p.outbuf and not p.writing and p.task is not None:
                        selector.register(p.task.fileno(), selectors.EVENT_WRITE, (p, "write"))
                        p.writing = True
            if exiting_since:
                left = exiting_since + EXIT_GRACE - time.monotonic()
                if left <= 0:
                    with self._lock:
                        for p in self._procs:
                            _kill(p)
                    left = POLL
                timeout = left if timeout is None else min(timeout, left)
            with self._lock:
                deferred, self._deferred = self._deferred, []
            for done in deferred:
                _deliver(done)
            for key, _ in selector.select(0 if self._deferred else timeout):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                p, kind = key.data
                if p not in self._procs:
                    continue
                if kind == "write":
                    with self._lock:
                        self._write_more(p)
                elif kind == "exit":
                    self._on_death(p)
                else:
                    self._on_readable(p)

    def _timers(self) -> float | None:
        """Kill workers that overstay a cancelled batch; poll where no pidfd."""
        now = time.monotonic()
        wake: float | None = None
        for p in list(self._procs):
            if p.cancel_at:
                if now >= p.cancel_at:
                    _kill(p)
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

    def _on_readable(self, p: _Proc) -> None:
        try:
            message = _worker.read_message(p.result_r)
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

    def _on_message(self, p: _Proc, message: bytes) -> None:
        import pickle

        bid, status, start, _n, extra, outcomes, whole = pickle.loads(message)
        if status == _worker.STATUS_LOGS:   # before the job: it may have none (initializer)
            _logs.replay(outcomes, functools.partial(_log_index, p))
            return
        if status == _worker.STATUS_STOLEN:
            # A reply may come after its batch ended (it then took nothing).
            if p.jobs and p.jobs[0].bid == bid:
                job = p.jobs[0]
                job.stolen = int(extra) if extra >= 0 else None
                job.steal_reply.set()
            return
        job = p.jobs[0]
        assert job.bid == bid, (job.bid, bid)
        batch = job.batch
        if status == _worker.STATUS_ITEMS_FAILED:
            self._items_failed(p, job)
            return
        if status in (_worker.STATUS_PARTIAL, _worker.STATUS_DONE):
            got = _outcomes(outcomes, start, whole)
            if got is None:   # not as one: the worker sends them again one by one
                with self._lock:
                    self._write(p, _request(bid, _worker.RESEND))
                return
            values, errors = got
        if status == _worker.STATUS_PARTIAL:
            out, errs = batch.out, batch.errs
            assert out is not None
            assert errs is not None
            assert len(out) == start
            errs.extend(errors)      # before the outcomes: see Backend.harvest
            out.extend(values)
            return
        with self._lock:
            p.jobs.popleft()
            p.ran = True
            self._start_failures = 0
            p.cancel_at = 0.0
            if p.retiring:
                self._close_task(p)   # it exits now; a fresh one starts on demand
            self._dispatch()
            if whole and not p.jobs:   # (a next job says it too)
                self._write(p, _request(bid, _worker.RELEASE))
        job.steal_reply.set()   # a steal that raced with the end: nothing to take
        batch.it = None         # _Unstarted -> job -> batch: a cycle holding its items
        if status == _worker.STATUS_DONE:
            if start:
                assert batch.out is not None
                assert batch.errs is not None
                values = batch.out + values
                errors = batch.errs + errors
            done = Completion(batch, values, errors or None, extra)
        else:   # STATUS_INIT_FAILED
            _values, _packed, records = pickle.loads(outcomes)   # plain: see pack_outcomes
            cause = _rebuild(records[0])
            failures = [init_failure(initializer_failed(self._initializer, cause))
                        for _ in range(job.size)]
            done = Completion(batch, failures, list(range(job.size)), 0.0)
        _deliver(done)

    def _items_failed(self, p: _Proc, job: _Job) -> None:
        """``p`` could not unpickle ``job``'s items as one, and ran none: they go
        again one by one, so that the one at fault fails alone."""
        size = job.size
        done = self._one_by_one(job)   # outside the lock: a __reduce__ is the user's code
        with self._lock:
            p.jobs.popleft()
            p.ran = True
            p.tasks -= size
            p.retiring = self._max_tasks is not None and p.tasks >= self._max_tasks
            p.cancel_at = 0.0
            if job.batch.cancelled:   # read under the lock: see cancel()
                done = Completion(job.batch, [], None, 0.0)
            elif done is None:
                self._pending.appendleft(job)
            self._dispatch()
        if done is not None:
            job.batch.it = None   # break the cycle (see _on_message)
            _deliver(done)

    def _one_by_one(self, job: _Job) -> Completion | None:
        """Pickle ``job``'s items again, one per item, under a new batch id (what
        the slot or a late message says of the old one is not about this).

        None, or the completion to report if its first item cannot be pickled on
        its own any more (the items after it are then sent again by the scheduler).
        """
        batch = job.batch
        payload, n, error = _pickle_items(batch.items[:job.size], _dumps_each)
        if payload is None:
            assert error is not None
            return Completion(batch, [error], [0], 0.0)
        job.bid, job.items, job.size = next(self._bids), payload, n
        return None

    def _on_death(self, p: _Proc) -> None:
        # Outcomes it sent before dying come first.
        while p.result_r >= 0 and _readable(p.result_r):
            try:
                message = _worker.read_message(p.result_r)
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
            and q[1] == _worker.POS_ITEMS and not p.jobs[0].batch.cancelled else None
        early = self._one_by_one(again) if again is not None else None
        reports: list[Completion] = []
        with self._lock:
            if p not in self._procs:
                return
            self._procs.remove(p)
            returncode = self._reap(p)
            running = q is not None and bool(p.jobs) and q[0] == p.jobs[0].bid
            pos = q[1] if q is not None else 0
            jobs = list(p.jobs)
            p.jobs.clear()
            if again is not None:   # still jobs[0]: only this thread takes jobs away
                if again.batch.cancelled:   # read under the lock: see cancel()
                    early = Completion(again.batch, [], None, 0.0)
                elif early is None:
                    self._pending.appendleft(again)
            elif jobs:
                early = self._died_loading(p, jobs[0], running, returncode)
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
            for i, job in enumerate(jobs):
                batch = job.batch
                batch.it = None   # break the cycle (see _on_message)
                if i == 0 and running:
                    if batch.cancelled:
                        reports.append(Completion(batch, [], None, 0.0))
                        continue
                    if pos < 0:   # every item ran; it died sending their outcomes
                        got = list(batch.out or ())
                        failed = [e for e in batch.errs or () if e < len(got)]
                        lost = WorkerCrashed(
                            f"the worker process (pid {p.pid}) died while sending this "
                            f"task's outcome back: {_describe_exit(returncode)}",
                            pid=p.pid, exitcode=returncode)
                        for i in range(len(got), min(job.size, batch.limit)):
                            got.append(lost if i == len(got) else _crashed_copy(lost))
                            failed.append(i)
                        reports.append(Completion(batch, got, failed,
                                                  time.monotonic() - batch.started))
                        continue
                    if p.reason is not None:
                        error: BaseException = p.reason[1]
                    else:
                        error = WorkerCrashed(
                            f"the worker process (pid {p.pid}) running this task died: "
                            f"{_describe_exit(returncode)}", pid=p.pid, exitcode=returncode)
                    # Outcomes it sent before dying stand; the items after those
                    # and before `pos` ran, but their outcomes died with it.
                    got = list(batch.out or ())[:pos]
                    failed = [e for e in batch.errs or () if e < len(got)]
                    values: list[Any] = got + [None] * (pos - len(got))
                    values.append(error)
                    failed.append(pos)
                    reports.append(Completion(batch, values, failed,
                                              time.monotonic() - batch.started,
                                              rerun=(len(got), pos)))
                elif batch.cancelled:
                    reports.append(Completion(batch, [], None, 0.0))
                else:
                    self._pending.appendleft(job)   # never started: it runs elsewhere
            self._dispatch()   # also while closing: close(cancel=False) runs what is queued
        for done in reports:
            _deliver(done)

    def _died_loading(self, p: _Proc, job: _Job, running: bool,
                      returncode: int | None) -> Completion | None:
        """``job``'s completion if ``p`` died in the pool's initializer or unpickling
        ``job``'s function (the slot says which): every item fails, as each would
        on any worker. The initializer's: ``WorkerInitError`` (the initializer
        failed, as when it raises; the ``WorkerCrashed`` saying how the worker
        died is its cause); the function's: ``WorkerCrashed``."""
        q = p.q
        if q is None or job.batch.cancelled or p.reason is not None:
            return None
        how = _describe_exit(returncode)
        if running and q[1] == _worker.POS_FUNCTION:
            def error() -> BaseException:
                return WorkerCrashed(f"the worker process (pid {p.pid}) died while unpickling "
                                     f"this task's function: {how}",
                                     pid=p.pid, exitcode=returncode)
        elif not running and not p.ran and q[1] == _worker.POS_INITIALIZER:
            crashed = WorkerCrashed(f"the worker process (pid {p.pid}) died in the pool's "
                                    f"initializer: {how}", pid=p.pid, exitcode=returncode)
            init_error = WorkerInitError(f"the pool's initializer {self._initializer!r} killed "
                                         f"its worker process (pid {p.pid}): {how}")
            init_error.__cause__ = crashed

            def error() -> BaseException:
                return init_failure(init_error)
        else:
            return None
        n = job.size
        return Completion(job.batch, [error() for _ in range(n)], list(range(n)),
                          time.monotonic() - job.batch.started)

    def _reap(self, p: _Proc) -> int | None:
        assert self._selector is not None
        for fd_name in ("result_r", "pidfd"):
            fd = getattr(p, fd_name)
            if fd >= 0:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(fd)
        returncode = None
        if p.popen is not None:
            try:
                returncode = p.popen.wait(timeout=EXIT_GRACE)
            except subprocess.TimeoutExpired:
                _kill(p)
                returncode = p.popen.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)   # what its tasks started and left behind
        self._close_task(p)
        _close_sock(p, "ctl")
        for fd_name in ("result_r", "life_w", "pidfd"):
            _close_fd(p, fd_name)
        return returncode


# -- helpers ---------------------------------------------------------------------

def _forget(backend: weakref.ref[ProcessBackend], ident: tuple[type, int],
            _ref: object) -> None:
    """A function the backend held a pickle of is gone: so is its entry."""
    owner = backend()
    if owner is not None:
        owner._fns.pop(ident, None)


def _same(obj: object) -> object:
    return obj


def _log_index(p: _Proc, where: tuple[int, int]) -> int | None:
    """The input index of the item a record was logged in (``_worker._forward_logs``)."""
    bid, pos = where
    job = p.jobs[0] if p.jobs else None
    return _logs.item_index(job.batch, pos) if job is not None and job.bid == bid else None


def _deliver(done: Completion) -> None:
    """Report ``done`` from the supervisor thread, which nothing may stop.

    A sink is conveyor's own (the scheduler's, a Pool's): one that raises is
    a bug, reported as an uncaught thread exception is, while the supervisor
    goes on serving every other batch.
    """
    try:
        done.batch.sink(done)
    except Exception as exc:
        _report_bug(exc)


def _report_bug(exc: BaseException) -> None:
    threading.excepthook(threading.ExceptHookArgs(
        (type(exc), exc, exc.__traceback__, threading.current_thread())))


def _refused(batch: Batch) -> Completion | None:
    """Call ``batch.on_start`` (first send only): the completion to report if it must
    not run (a cancelled ``Pool.submit``), or None to run it. If the callback
    raises, the batch's items fail with that error instead of being lost."""
    on_start = batch.on_start
    if on_start is None:
        return None
    try:
        if on_start():
            return None
    except Exception as exc:
        n = batch.limit
        return Completion(batch, [exc] * n, list(range(n)), 0.0)
    return Completion(batch, [], None, 0.0)


def _crashed_copy(error: WorkerCrashed) -> WorkerCrashed:
    return WorkerCrashed(str(error), pid=error.pid, exitcode=error.exitcode)


def _fresh(exc: NotPicklable) -> NotPicklable:
    e = NotPicklable(str(exc), type_name=exc.type_name)
    e.__cause__ = exc.__cause__
    return e


def _pickle_items(items: list[Any], dump: Callable[[list[Any]], Any] = _dumps,
                  ) -> tuple[Any, int, BaseException | None]:
    """Pickle a batch's items: (payload, how many, error for the first one that fails).

    When an item cannot be pickled, the payload holds the items before it (or
    is None if it is the first); the scheduler sends the rest again, and that
    item then fails on its own. ``dump`` makes the payload (by default one
    pickle of the list).
    """
    try:
        return dump(items), len(items), None
    except Exception:
        pass
    for i, x in enumerate(items):
        try:
            _dumps(x)
        except Exception as exc:
            if i:
                return dump(items[:i]), i, None
            error = NotPicklable(
                f"this item, a {type(x).__name__}, cannot be sent to a worker process: "
                f"{type(exc).__name__}: {exc}", type_name=type(x).__name__)
            error.__cause__ = exc
            return None, 0, error
    return dump(items), len(items), None   # pragma: no cover - it failed as a whole only


def _outcomes(data: bytes, start: int, whole: bool) -> tuple[list[Any], list[int]] | None:
    """Outcomes of positions ``start...``, exceptions rebuilt; failed positions.

    A result that cannot be unpickled here (its class's module is missing,
    its ``__reduce__`` raises, even ``SystemExit``) fails its own task only:
    None if the outcomes are ``whole`` (see ``_worker.pack_outcomes``) and do
    not unpickle as one, so that the worker sends them again one by one.
    """
    got = _worker.unpack_outcomes(data, start, whole)
    if got is None:
        return None
    values, records, broken = got
    values, positions = _rebuild_all(values, records, start)
    if broken:
        for i, exc in broken.items():
            error = NotPicklable("the result of this task could not be unpickled in the "
                                 f"parent process: {type(exc).__name__}: {_worker._safe_str(exc)}")
            error.__cause__ = exc
            values[i] = error
            positions.append(start + i)
        positions.sort()
    return values, positions


def _request(bid: int, key: int) -> bytes:
    """A message to a worker about batch ``bid``'s outcomes (``_worker.RESEND``, ``RELEASE``)."""
    import pickle

    return pickle.dumps((bid, key, None, None, None), 5)


def _rebuild_all(values: list[Any], records: list[tuple[Any, ...]],
                 start: int) -> tuple[list[Any], list[int]]:
    positions = []
    for rec in records:
        values[rec[0] - start] = _rebuild(rec)
        positions.append(rec[0])
    return values, positions


def _rebuild(rec: tuple[Any, ...]) -> BaseException:
    """The exception for a worker's failure record (see ``_worker._record``)."""
    import pickle

    _pos, kind, exc_bytes, type_name, message, tb = rec
    if kind == _worker.KIND_ITEM:
        return NotPicklable(f"this item could not be unpickled in the worker process: "
                            f"{message}", type_name=type_name or None)
    if kind == _worker.KIND_FUNCTION:
        return NotPicklable(message)
    if kind == _worker.KIND_RESULT:
        return NotPicklable(
            f"the task returned a {type_name}, which cannot be pickled to send it back "
            f"from the worker process ({message}); return something picklable, e.g. "
            "plain data", type_name=type_name)
    exc: BaseException | None = None
    if exc_bytes is not None:
        try:
            exc = pickle.loads(exc_bytes)
        except BaseException:   # it loaded in the worker; whatever it does here, it is data
            exc = None
    if not isinstance(exc, BaseException):
        exc = NotPicklable(
            f"the task raised {type_name}: {message} -- that exception cannot be pickled "
            "to send it back from the worker process, so this error stands in for it "
            "(its worker-side traceback is attached)", type_name=type_name)
    # Through the descriptor: `exc.__cause__ = ...` runs the class's __setattr__,
    # which a frozen dataclass exception makes raise.
    _CAUSE.__set__(exc, RemoteTraceback(tb) if isinstance(tb, str)
                   else RemoteTraceback._from_frames(tb))
    return exc


_CAUSE: Any = BaseException.__dict__["__cause__"]


def _shared_page() -> int:
    """A file descriptor for one page of memory the worker maps too."""
    try:
        fd = os.memfd_create("conveyor-slot")   # Linux: no file at all
    except (AttributeError, OSError):
        with tempfile.TemporaryFile() as f:   # unlinked at once
            fd = os.dup(f.fileno())
    os.ftruncate(fd, mmap.PAGESIZE)
    return fd


def _readable(fd: int) -> bool:
    import select

    try:
        r, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(r)


def _kill(p: _Proc) -> None:
    if p.pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)


def _close_sock(p: _Proc, name: str) -> None:
    sock = getattr(p, name)
    if sock is not None:
        setattr(p, name, None)
        sock.close()


def _close_fd(p: _Proc, name: str) -> None:
    fd = getattr(p, name)
    if fd >= 0:
        setattr(p, name, -1)
        with contextlib.suppress(OSError):
            os.close(fd)
