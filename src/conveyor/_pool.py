"""``conveyor.Pool``: workers that stay up between maps, plus ``submit``."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, overload

from . import _backends
from ._api import (
    MAP_DEFAULTS,
    check_fn,
    check_items,
    check_options,
    check_worker_options,
    resolve_backend,
    start_run,
)
from ._backends._base import Batch, Completion
from ._results import Results
from ._scheduler import Run
from ._worker import Apply
from .errors import NotPicklable, PoolClosed

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["MapOptions", "Pool"]

T = TypeVar("T")
R = TypeVar("R")


class MapOptions(TypedDict, total=False):
    """The per-map options of ``Pool.map`` (the same as ``conveyor.map``'s)."""

    ordered: bool
    window: int | None
    batch: int | Literal["auto"]
    timeout: float | None
    retries: int
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    backoff: float
    on_error: Literal["raise", "return", "skip"]
    rate: float | None
    progress: bool | dict[str, Any]
    desc: str | None


class _AsyncApply(Apply):
    async def __call__(self, packed: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        return await self.fn(*packed[0], **packed[1])


class Pool:
    """Reusable workers: ``map`` as often as you like, ``submit`` single calls.

    ``Pool(backend="thread", workers=None, initializer=None, initargs=(),
    max_tasks_per_worker=None)``. ``initializer(*initargs)`` runs once in each
    worker as it starts (for the asyncio backend: once per worker coroutine,
    awaited if it is a coroutine function); it can keep what the tasks need in
    :func:`conveyor.worker_state`. If it raises, every task given to that
    worker fails with :class:`~conveyor.errors.WorkerInitError`. Process
    workers start at once and stay warm between maps; ``max_tasks_per_worker``
    replaces a process worker after that many tasks (a leaky library).
    ``backend="dask"`` runs on a dask cluster (``cluster=`` as for
    :func:`conveyor.map`; a LocalCluster it starts lives as long as the pool).

    Several maps and submits may use one pool at the same time, from any
    thread; they share its workers.

    **Closing.** ``close()`` refuses new work (``PoolClosed``), waits for the
    calls given to ``submit`` to finish, cancels maps that are still running
    (consume a map's results before closing its pool), and stops the workers.
    ``close(cancel=True)`` also cancels the submitted calls that have not
    started. Leaving a ``with`` block calls ``close()``, or
    ``close(cancel=True)`` when the block raised.
    """

    def __init__(self, backend: Literal["thread", "asyncio", "process", "dask"] = "thread",
                 workers: int | None = None, *,
                 initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = (),
                 max_tasks_per_worker: int | None = None, cluster: Any = None) -> None:
        where = "conveyor.Pool"
        if backend not in _backends.BACKENDS:
            choices = ", ".join(repr(b) for b in _backends.BACKENDS)
            raise ValueError(f"{where}: unknown backend {backend!r}; choose one of {choices}.")
        worker_options = check_worker_options(where, backend, initializer, initargs,
                                              max_tasks_per_worker, cluster)
        if workers is None:
            if backend != "dask":   # dask: the cluster's threads
                workers = _backends.default_workers(backend)
        elif isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"{where}: workers must be an int, got {workers!r}")
        elif workers < 1:
            raise ValueError(f"{where}: workers must be >= 1, got {workers}")
        self.backend_name = backend
        self._backend = _backends.create(backend, workers, **worker_options)
        self.workers = self._backend.workers
        self._backend.start()
        self._backend.warm_up()
        self._appliers: dict[int, Apply] = {}   # id(fn) -> its submit wrapper
        self._lock = threading.Lock()
        self._closed = False
        self._runs: weakref.WeakSet[Run] = weakref.WeakSet()
        self._futures: set[Future[Any]] = set()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(cancel=et is not None)

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise PoolClosed(f"conveyor.Pool.{what}: the pool is closed; create a new Pool")

    @overload
    def map(self, fn: Callable[[T], Awaitable[R]],
            items: Iterable[T], **options: Unpack[MapOptions]) -> Results[R]: ...
    @overload
    def map(self, fn: Callable[[T], R], items: Iterable[T],
            **options: Unpack[MapOptions]) -> Results[R]: ...
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any],
            **options: Unpack[MapOptions]) -> Results[Any]:
        """Like :func:`conveyor.map`, on this pool's workers (same options)."""
        where = "conveyor.Pool.map"
        check_fn(fn, where)
        check_items(items, where)
        resolve_backend(self.backend_name, fn, where)
        unknown = set(options) - set(MAP_DEFAULTS)
        if unknown:
            raise TypeError(f"{where}: unexpected option(s) {sorted(unknown)}; "
                            "backend and workers belong to the Pool itself")
        opts = check_options(where, **{**MAP_DEFAULTS, **options})
        with self._lock:
            self._check_open("map")
            run = start_run(fn, items, self._backend, owns_backend=False, options=opts,
                            where=where)
            self._runs.add(run)
        return Results(run)

    @overload
    def submit(self, fn: Callable[..., Awaitable[R]], /,
               *args: Any, **kwargs: Any) -> Future[R]: ...
    @overload
    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]: ...
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a worker; returns a ``concurrent.futures.Future``.

        ``future.cancel()`` succeeds while the call has not started. The
        future's exception, if any, is the call's own, with its traceback.
        """
        where = "conveyor.Pool.submit"
        check_fn(fn, where)
        resolve_backend(self.backend_name, fn, where)
        wrapper = self._applier(fn)
        fut: Future[Any] = Future()
        if self.backend_name == "process":
            from ._backends.process import check_arguments

            # As the stdlib's executors do, a function or an argument that
            # cannot be sent fails the call's future, not submit itself.
            try:
                self._backend.prepare(wrapper, where)
                check_arguments(args, kwargs, where)
            except NotPicklable as exc:
                with self._lock:
                    self._check_open("submit")
                fut.set_running_or_notify_cancel()
                fut.set_exception(exc)
                return fut

        def report(done: Completion) -> None:
            with self._lock:
                self._futures.discard(fut)
            if fut.done():
                return  # cancelled before it started
            if not done.values:
                if fut.running():   # cancelled while it ran (asyncio: a real cancel)
                    fut.set_exception(PoolClosed("the pool was closed with cancel=True "
                                                 "while this call ran"))
                else:               # dropped from the queue before it started
                    fut.cancel()
                    fut.set_running_or_notify_cancel()
                return
            value = done.values[0]
            if done.errors:
                fut.set_exception(value)
            else:
                fut.set_result(value)

        batch = Batch(wrapper, [(args, kwargs)], report, owner=self)
        batch.on_start = fut.set_running_or_notify_cancel

        def on_cancel(f: Future[Any]) -> None:
            if f.cancelled():
                self._backend.cancel(batch)

        with self._lock:
            self._check_open("submit")
            self._futures.add(fut)
            fut.add_done_callback(on_cancel)
            self._backend.submit(batch)
        return fut

    def _applier(self, fn: Callable[..., Any]) -> Apply:
        """One wrapper per function: a process worker receives each function once."""
        wrapper = self._appliers.get(id(fn))
        if wrapper is None or wrapper.fn is not fn:
            wrapper = _AsyncApply(fn) if self.backend_name == "asyncio" else Apply(fn)
            with self._lock:
                self._appliers[id(fn)] = wrapper
                if len(self._appliers) > 64:
                    del self._appliers[next(iter(self._appliers))]
        return wrapper

    def close(self, *, cancel: bool = False) -> None:
        """Stop the pool (see the class docstring for what is waited for)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            runs = list(self._runs)
            futures = list(self._futures)
        for run in runs:
            if not run.finished:
                run.close(wait=True, error=PoolClosed(
                    "the pool was closed while this map was running; consume a map's "
                    "results before closing its pool"))
        if cancel:
            for f in futures:
                f.cancel()   # only succeeds for calls that have not started
        self._backend.close(cancel=cancel, wait=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<conveyor.Pool backend={self.backend_name!r} workers={self.workers} {state}>"
