"""``conveyor.Pool``: workers that stay up between maps, plus single calls.

A ``concurrent.futures.Executor``: ``submit``, ``map``, ``shutdown`` and the
``with`` block behave as the executor contract says, with conveyor's
streaming ``map`` (see ``_executors`` for the drop-in classes with the
stdlib's eager ``map``). Single calls live in ``_calls``; maps are runs of
the engine (``_engine``) on the pool's backend.

**Lifetimes.** A pool is released like a ``ThreadPoolExecutor``: dropped
without ``shutdown``, its workers finish the calls given to it and exit. A
map keeps its pool alive while it runs. At interpreter exit (before
``atexit`` handlers, as the stdlib does), every pool still open finishes
the calls given to it and shuts down; ``submit`` then raises.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor, Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _backends
from ._api import (
    MAP_DEFAULTS,
    check_fn,
    check_options,
    check_worker_options,
    is_async_fn,
    resolve_backend,
    spread,
    start_run,
    zip_items,
)
from ._backends._base import Backend
from ._batching import Memory
from ._calls import PLAIN, CallOptions, Calls
from ._engine import Run
from ._options import BackendName, MapOptions, PoolOptions, by_kind
from ._results import Results
from ._slips import unknown_options
from ._worker import Apply
from .errors import NotPicklable, PoolClosed

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

__all__ = ["MapOptions", "Pool", "PoolOptions"]

T = TypeVar("T")
R = TypeVar("R")


class _AsyncApply(Apply):
    async def __call__(self, packed: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        return await self.fn(*packed[0], **packed[1])


_live: weakref.WeakSet[Pool] = weakref.WeakSet()
_exiting = False


def _at_exit() -> None:
    """The interpreter is exiting: open pools finish their calls, then shut down."""
    global _exiting
    _exiting = True
    for pool in list(_live):
        pool.shutdown(wait=True)


threading._register_atexit(_at_exit)   # type: ignore[attr-defined]  # as concurrent.futures


class Pool(Executor):
    """Reusable workers: ``map`` as often as you like, ``submit`` single calls.

    ``Pool(backend="thread", workers=None, **options)``: the worker options of
    :func:`conveyor.map` (those the backend takes: an option it does not take
    raises ``ValueError`` naming the backends that do), and the pool's own
    (``loop``, ``thread_name_prefix``). ``initializer(*initargs)`` runs once in each
    worker as it starts (for the asyncio backend: once per worker coroutine,
    awaited if it is a coroutine function); it can keep what the tasks need in
    :func:`conveyor.worker_state`. If it raises, every task given to that
    worker fails with :class:`~conveyor.errors.WorkerInitError`. Process
    workers start at once and stay warm between maps; ``max_tasks_per_worker``
    replaces a process worker after that many tasks (a leaky library).
    ``forward_logs``: what process and dask workers log (the initializer too)
    is handled by this process's logging, as for :func:`conveyor.map`.
    ``backend="dask"`` runs on a dask cluster (``cluster=`` as for
    :func:`conveyor.map`; a LocalCluster it starts lives as long as the pool).
    ``backend="asyncio"`` runs its coroutines on conveyor's event loop, the
    one every sync map of a coroutine function shares (so a client made in
    one call serves the next), or on ``loop=``, a loop you run yourself
    (conveyor never stops or closes it).

    Several maps and submits may use one pool at the same time, from any
    thread; they share its workers.

    **Shutting down.** ``shutdown(wait=True, cancel_futures=False)`` refuses
    new work (``PoolClosed``, a ``RuntimeError``), lets the calls given to
    ``submit`` finish (``cancel_futures=True`` cancels those that have not
    started; a call that runs is never killed), cancels maps that are still
    running (consume a map's results before shutting its pool down), and
    stops the workers; ``wait=False`` returns at once and the workers stop
    once their calls are done. ``close(cancel=False)`` is
    ``shutdown(wait=True, cancel_futures=cancel)``. Leaving a ``with`` block
    calls ``close()``, or ``close(cancel=True)`` when the block raised; on
    Ctrl-C (``KeyboardInterrupt``) nothing is waited for: process workers are
    killed and thread calls are left to end in the background.
    """

    _map_window: int | None = None   # executors: a map's window unless buffersize is given

    def __init__(self, backend: BackendName | str = "thread", workers: int | None = None,
                 **options: Unpack[PoolOptions]) -> None:
        where = f"conveyor.{type(self).__name__}"
        self._closed = True   # until the backend is up: __del__ and shutdown see a closed pool
        if not _backends.known(backend):
            choices = ", ".join(repr(b) for b in _backends.names())
            raise ValueError(f"{where}: unknown backend {backend!r}; choose one of {choices}.")
        valid = [o.name for o in by_kind("worker", "pool")]
        unknown = set(options) - set(valid)
        if unknown:
            raise unknown_options(where, unknown, ["backend", "workers", *valid])
        worker_options = check_worker_options(where, backend, dict(options), pool=True)
        if workers is None:
            workers = _backends.default_workers(backend)   # None: the backend counts them
        elif isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"{where}: workers must be an int, got {workers!r}")
        elif workers < 1:
            raise ValueError(f"{where}: workers must be >= 1, got {workers}")
        self.backend_name = backend
        self._backend: Backend = _backends.create(backend, workers, **worker_options)
        self.workers = self._backend.workers
        self._backend.start()
        self._backend.warm_up()
        self._calls = Calls(self._backend)
        self._memory = Memory()   # batch sizes learned per function, for the next maps
        self._lock = threading.Lock()   # guards _closed and _runs; never held across a call out
        self._closed = False
        self._runs: weakref.WeakKeyDictionary[Run, bool] = weakref.WeakKeyDictionary()
        # Dropped without shutdown: the workers finish what they were given, then exit.
        self._finalizer = weakref.finalize(self, _release_later, self._calls, self._backend)
        self._finalizer.atexit = False   # at exit, _at_exit has shut it down already
        _live.add(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is not None and issubclass(et, (KeyboardInterrupt, SystemExit)):
            self._abort()
        else:
            self.close(cancel=et is not None)

    def _check_open(self, what: str) -> None:
        if _exiting:
            raise PoolClosed(f"conveyor.{type(self).__name__}.{what}: cannot schedule new "
                             "futures after interpreter shutdown")
        if self._closed:
            raise PoolClosed(f"conveyor.{type(self).__name__}.{what}: cannot schedule new "
                             "futures after shutdown; create a new pool")

    # -- maps ----------------------------------------------------------------
    # Not Executor.map's signature: conveyor's options, and a streaming Results
    # (the executor classes in _executors have the stdlib's map).
    @overload  # type: ignore[override]
    def map(self, fn: Callable[..., Awaitable[R]], /, *iterables: Iterable[Any],
            **options: Unpack[MapOptions]) -> Results[R]: ...
    @overload
    def map(self, fn: Callable[..., R], /, *iterables: Iterable[Any],
            **options: Unpack[MapOptions]) -> Results[R]: ...
    def map(self, fn: Callable[..., Any], /, *iterables: Iterable[Any],
            **options: Unpack[MapOptions]) -> Results[Any]:
        """Like :func:`conveyor.map`, on this pool's workers (same options).

        With several iterables, ``fn(*args)`` gets one item of each, up to the
        shortest, as the builtin ``map`` does. Unlike ``Executor.map``, the
        input is read lazily (at most ``window`` items ahead of what you
        consumed) and ``timeout=`` is per task: see the executor classes for
        the stdlib's eager ``map`` with an overall deadline.
        """
        return self._map(fn, iterables, options, f"conveyor.{type(self).__name__}.map")

    @overload
    def starmap(self, fn: Callable[..., Awaitable[R]], items: Iterable[Iterable[Any]], /,
                **options: Unpack[MapOptions]) -> Results[R]: ...
    @overload
    def starmap(self, fn: Callable[..., R], items: Iterable[Iterable[Any]], /,
                **options: Unpack[MapOptions]) -> Results[R]: ...
    def starmap(self, fn: Callable[..., Any], items: Iterable[Iterable[Any]], /,
                **options: Unpack[MapOptions]) -> Results[Any]:
        """Like :func:`conveyor.starmap` (``fn(*item)`` for each item), on this
        pool's workers (same options)."""
        return self._map(fn, (items,), options, f"conveyor.{type(self).__name__}.starmap",
                         star=True)

    def _map(self, fn: Callable[..., Any], iterables: tuple[Any, ...], options: Any,
             where: str, *, eager: bool = False, defer_errors: bool = False,
             star: bool = False) -> Results[Any]:
        check_fn(fn, where)
        resolve_backend(self.backend_name, fn, where)
        call, items = zip_items(fn, iterables, where)
        if star:
            call = spread(call)
        unknown = set(options) - set(MAP_DEFAULTS)
        if unknown:
            pool = f"conveyor.{type(self).__name__}"
            raise unknown_options(where, unknown, list(MAP_DEFAULTS), {
                name: f"{name}= belongs to the pool: {pool}({name}=...)"
                for name in (o.name for o in by_kind("run", "worker", "pool"))})
        opts = check_options(where, **{**MAP_DEFAULTS, **options})
        if defer_errors:   # each error in its result's place, raised as it is consumed
            opts = dataclasses.replace(opts, on_error="defer")
        with self._lock:
            self._check_open("map")
            run = start_run(call, items, self._backend, owns_backend=False, options=opts,
                            where=where, memory=self._memory)
            run.keep = self    # a map keeps its pool alive (``for r in Pool().map(...)``)
            self._runs[run] = eager
        return Results(run, where=where)

    # -- single calls ----------------------------------------------------------
    @overload
    def submit(self, fn: Callable[..., Awaitable[R]], /,
               *args: Any, **kwargs: Any) -> Future[R]: ...
    @overload
    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]: ...
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a worker; returns a ``concurrent.futures.Future``.

        ``future.cancel()`` succeeds while the call has not started. The
        future's exception, if any, is the call's own, with its traceback; a
        function or argument that cannot be sent to a worker process fails
        the future with :class:`~conveyor.errors.NotPicklable` (a
        ``pickle.PicklingError``). For a per-call ``timeout`` or ``retries``,
        use :meth:`schedule`.
        """
        return self._submit(fn, args, kwargs, PLAIN, "submit")

    def schedule(self, fn: Callable[..., Any], /, args: Iterable[Any] = (),
                 kwargs: dict[str, Any] | None = None, *, timeout: float | None = None,
                 retries: int = 0,
                 retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
                 backoff: float = 0.1) -> Future[Any]:
        """``submit`` with options of its own, as pebble's ``schedule``.

        ``timeout``: seconds the call may run (from when it starts, not from
        when it was scheduled); an overdue call fails with
        :class:`~conveyor.TaskTimeout` and is stopped as its backend allows
        (a process worker is killed and replaced, a coroutine is cancelled, a
        thread call is abandoned). ``retries``: extra attempts for failures
        matching ``retry_on`` (a timeout included), after ``backoff`` *
        2**attempt seconds (jittered); the future stays running meanwhile.
        """
        where = f"conveyor.{type(self).__name__}.schedule"
        if isinstance(args, (str, bytes)) or not isinstance(args, Iterable):
            raise TypeError(f"{where}: args must be a sequence of arguments, e.g. (x,); "
                            f"got {args!r}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"{where}: kwargs must be a dict, got {kwargs!r}")
        checked = check_options(where, **{**MAP_DEFAULTS, "timeout": timeout,
                                          "retries": retries, "retry_on": retry_on,
                                          "backoff": backoff})
        options = CallOptions(checked.timeout, checked.retries, checked.retry_on,
                              checked.backoff)
        return self._submit(fn, tuple(args), dict(kwargs or {}), options, "schedule")

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                options: CallOptions, what: str) -> Future[Any]:
        where = f"conveyor.{type(self).__name__}.{what}"
        check_fn(fn, where)
        resolve_backend(self.backend_name, fn, where)
        self._check_open(what)
        wrapper = _AsyncApply(fn) if is_async_fn(fn) else Apply(fn)
        check_arguments = type(self._backend).check_arguments
        if check_arguments is not None:
            # As the stdlib's executors do, a function or an argument that
            # cannot be sent fails the call's future, not submit itself.
            try:
                self._backend.prepare(wrapper, where)
                check_arguments(args, kwargs, where)
            except NotPicklable as exc:
                return self._calls.fail(exc)
        return self._calls.submit(wrapper, (args, kwargs), options)

    # -- shutting down ---------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work, finish (or cancel) what was given, stop the workers.

        See the class docstring. May be called more than once; each call with
        ``wait=True`` returns once the workers have stopped.
        """
        with self._lock:
            self._closed = True
            runs = list(self._runs.items())
        _live.discard(self)
        if cancel_futures:
            self._calls.cancel_pending()
        stop = PoolClosed("the pool was shut down while this map was running; consume a "
                          "map's results before shutting its pool down")
        for run, eager in runs:
            if not eager:
                run.close(wait=wait, error=stop)
        self._finalizer.detach()
        if wait:
            _release(self._calls, self._backend, [run for run, eager in runs if eager])
        else:
            _release_later(self._calls, self._backend, [run for run, eager in runs if eager])

    def close(self, *, cancel: bool = False) -> None:
        """``shutdown(wait=True, cancel_futures=cancel)``: conveyor's name, kept for
        symmetry with ``Results.close`` and for code written before ``shutdown``."""
        self.shutdown(wait=True, cancel_futures=cancel)

    def _abort(self) -> None:
        """Ctrl-C: stop at once; wait for nothing that may hang."""
        with self._lock:
            self._closed = True
            runs = list(self._runs)
        _live.discard(self)
        self._finalizer.detach()
        self._calls.cancel_pending()
        for run in runs:
            run.close(wait=False)
        self._calls.close()
        self._backend.close(cancel=True, wait=False)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<conveyor.{type(self).__name__} backend={self.backend_name!r} "
                f"workers={self.workers} {state}>")


def _release(calls: Calls, backend: Backend, runs: Iterable[Run] = ()) -> None:
    """Let the calls and eager maps given to a pool finish, then stop its workers."""
    for run in runs:
        run.wait_finished()
    calls.wait_idle()
    calls.close()
    backend.close(cancel=False, wait=True)


def _release_later(calls: Calls, backend: Backend, runs: list[Run] | None = None) -> None:
    """``_release`` without waiting here: in a thread of its own if anything is left to do."""
    if not len(calls) and not any(not run.finished for run in runs or ()):
        calls.close()
        backend.close(cancel=False, wait=False)
        return
    # Not a daemon: as with the stdlib, the program does not exit before the
    # calls given to a pool are done, also after shutdown(wait=False).
    threading.Thread(target=_release, args=(calls, backend, runs or ()),
                     name="conveyor-pool-shutdown").start()
