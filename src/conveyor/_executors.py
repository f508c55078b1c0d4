"""``conveyor.ThreadPoolExecutor`` and ``conveyor.ProcessPoolExecutor``: drop-in executors.

The stdlib's constructors and its ``map`` (eager, with an overall deadline),
on conveyor's pools: a worker process that dies fails only the call it ran
and is replaced (the stdlib's whole pool breaks), calls can have a timeout
and retries of their own (``schedule``), and a map is run by conveyor's
engine (adaptive batches) instead of one future per item.

``map`` keeps the stdlib's contract:

* the iterables are read at once (unless ``buffersize`` is given, as in
  Python 3.14: then at most that many results are waiting or running);
* results come in input order; a call's exception is raised when its
  result would be, after the results before it, and every item was started
  regardless (as if each had its own future);
* ``timeout`` is a deadline for the whole map, from the call of ``map``:
  ``TimeoutError`` (``concurrent.futures.TimeoutError``) once it passes;
* closing the iterator early (``break``, an exception) cancels what has not
  run; ``shutdown(wait=True)`` waits for an eager map's items to finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent import futures
from typing import Any, TypeVar

from ._api import check_fn, resolve_backend, spread
from ._engine.policy import Raised
from ._pool import Pool
from ._results import Results

__all__ = ["ProcessPoolExecutor", "ThreadPoolExecutor"]

R = TypeVar("R")


def _check_max_workers(max_workers: object) -> int | None:
    if max_workers is None:
        return None
    if isinstance(max_workers, bool) or not isinstance(max_workers, int):
        raise TypeError(f"max_workers must be an int, got {max_workers!r}")
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    return max_workers


def _check_initializer(initializer: object) -> None:
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")


class _StdlibMap(Pool):
    """The stdlib executors' ``map`` on a conveyor pool."""

    def map(self, fn: Callable[..., R], /, *iterables: Iterable[Any],  # type: ignore[override]
            timeout: float | None = None, chunksize: int = 1,
            buffersize: int | None = None) -> Iterator[R]:
        """Return an iterator over ``fn(*args)`` for the zipped ``iterables``, in order.

        ``timeout``: seconds for the whole map, from now. ``chunksize``: items
        sent to a worker together (``1``: conveyor sizes batches itself).
        ``buffersize``: read the input lazily, with at most this many items
        running or waiting to be consumed.
        """
        where = f"conveyor.{type(self).__name__}.map"
        if self.backend_name == "thread":
            chunksize = 1   # as the stdlib's: "with ThreadPoolExecutor, chunksize has no effect"
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"{where}: chunksize must be an int, got {chunksize!r}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if isinstance(buffersize, bool) or not isinstance(buffersize, int):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))):
            raise TypeError(f"{where}: timeout must be a number of seconds or None, "
                            f"got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._check_open("map")
        if buffersize is None:   # eager, as the stdlib: the input is read now
            check_fn(fn, where)
            resolve_backend(self.backend_name, fn, where)
            args = list(zip(*iterables))  # noqa: B905 - up to the shortest, as map()
            # Room for every item and one more: the run reads past the last
            # item to see the input end, and so ends without being consumed.
            window = len(args) + 1
            results = self._map(spread(fn), (args,), _options(window, min(chunksize, window)),
                                where, eager=True, defer_errors=True)
            results.keep_running()   # dropped unread, it still runs every item
        else:
            results = self._map(fn, iterables, _options(max(buffersize, chunksize), chunksize),
                                where, defer_errors=True)
            results._silence()   # as the stdlib's: no warning when it is never read
        return _deliver(results, deadline)

    def __exit__(self, *exc: Any) -> None:
        et = exc[0]
        if et is not None and issubclass(et, (KeyboardInterrupt, SystemExit)):
            self._abort()
        else:
            self.shutdown(wait=True)


def _options(window: int, chunksize: int) -> dict[str, Any]:
    return {"window": window, "batch": "auto" if chunksize == 1 else chunksize}


def _deliver(results: Results[Any], deadline: float | None) -> Generator[Any, None, None]:
    """The results, raising a call's exception in its place; closing this once it
    has started (``break``, an error, a timeout) cancels what has not run.

    ``map`` keeps no local for a result: the stdlib's ``map`` does not keep the
    last result handed out alive either.
    """
    try:
        yield from map(_unwrap, results.until(deadline))
    finally:
        results.close(wait=False, now=True)


def _unwrap(value: Any) -> Any:
    if type(value) is Raised:
        raise value.error
    return value


# Also the stdlib's classes, for code that checks (asyncio's set_default_executor
# wants a ThreadPoolExecutor). Their __init__ is not run: conveyor's methods come
# first in the MRO and none of the stdlib's own is reached.
class ThreadPoolExecutor(_StdlibMap, futures.ThreadPoolExecutor):
    """``concurrent.futures.ThreadPoolExecutor`` on conveyor's thread backend.

    The stdlib's constructor. Threads start as calls wait for them, up to
    ``max_workers`` (default ``min(32, cpus + 4)``), named
    ``{thread_name_prefix}_{n}`` when a prefix is given.
    """

    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "",
                 initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] = ()) -> None:
        workers = _check_max_workers(max_workers)   # None: the backend's default
        _check_initializer(initializer)
        if not isinstance(thread_name_prefix, str):
            raise TypeError(f"thread_name_prefix must be a str, got {thread_name_prefix!r}")
        super().__init__("thread", workers, initializer=initializer, initargs=initargs,
                         thread_name_prefix=thread_name_prefix)
        self._max_workers = self.workers


class ProcessPoolExecutor(_StdlibMap, futures.ProcessPoolExecutor):
    """``concurrent.futures.ProcessPoolExecutor`` on conveyor's process backend.

    The stdlib's constructor. ``max_workers`` defaults to the CPUs this
    process may use. Workers are fresh interpreters started by conveyor
    (never a fork of this process, and ``__main__`` is not re-imported), so
    ``mp_context`` does not choose how they start: it is accepted (and must
    be a multiprocessing context) for code that passes one. The queues, locks
    and values given in ``initargs`` must come from a ``spawn`` or
    ``forkserver`` context (docs/guide/pools.md says why).
    ``max_tasks_per_child``: a worker is replaced after that many calls.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] = (), *,
                 max_tasks_per_child: int | None = None) -> None:
        workers = _check_max_workers(max_workers)   # None: the backend's default
        _check_initializer(initializer)
        if mp_context is not None and not callable(getattr(mp_context, "get_start_method",
                                                           None)):
            raise TypeError(f"mp_context must be a multiprocessing context "
                            f"(multiprocessing.get_context(...)), got {mp_context!r}")
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child,
                                                                       int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._mp_context = mp_context
        super().__init__("process", workers, initializer=initializer, initargs=initargs,
                         max_tasks_per_worker=max_tasks_per_child)
        self._max_workers = self.workers

