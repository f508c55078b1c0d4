"""The public entry points: check and normalise arguments, then build a run."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _backends
from ._backends._base import Backend
from ._batching import Memory
from ._engine import Options, Run, new_run
from ._options import RunOptions, by_kind, map_fields, positive_int
from ._results import AsyncResults, Results
from ._slips import unknown_options
from ._source import AsyncSource, Source, ThreadSource, reads_directly
from ._worker import Star
from ._zipped import AsyncZipped, Zipped, length_of

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["MAP_DEFAULTS", "WORKER_OPTIONS", "AsyncZipped", "RunOptions", "Zipped",
           "amap", "astarmap", "check_fn", "check_options", "is_async_fn", "map",
           "resolve_backend", "spread", "starmap", "start_run", "zip_items"]

T = TypeVar("T")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
R = TypeVar("R")

#: The per-run options of ``map`` (beside backend, workers and the worker
#: options) with their defaults: ``Pool.map`` and pipeline stages take the same.
MAP_DEFAULTS: dict[str, Any] = {o.name: o.default for o in by_kind("map")}
#: The options that say how the workers are made (``map``, stages, ``Pool``).
WORKER_OPTIONS = tuple(o.name for o in by_kind("worker"))
#: Every option of ``map``, in the order its error messages list them.
_RUN_OPTIONS = [o.name for o in by_kind("map", "run", "worker")]


def is_async_fn(fn: object) -> bool:
    """True for coroutine functions, also behind ``functools.partial`` or ``__call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an instance's async __call__
    return call is not None and not inspect.isfunction(fn) and \
        inspect.iscoroutinefunction(call)


def check_fn(fn: object, where: str) -> None:
    if not callable(fn):
        raise TypeError(
            f"{where}: the function to run must be callable, got {fn!r} "
            f"({type(fn).__name__}). Pass the function itself, e.g. "
            f"{where}(fetch, urls), not fetch(urls).")


def resolve_backend(backend: str | None, fn: object, where: str) -> str:
    """The backend's name, ``fn`` checked against what its class can run.

    Raises ``ValueError`` for an unknown name (naming the registered ones) and
    ``TypeError`` for a function the backend cannot run (its class's message).
    """
    coroutine = is_async_fn(fn)
    if backend is None:
        return _backends.default_for(coroutine)
    if not _backends.known(backend):
        choices = ", ".join(repr(b) for b in _backends.names())
        raise ValueError(f"{where}: unknown backend {backend!r}; choose one of {choices} "
                         f"(or leave it out: coroutine functions run on "
                         f"{_backends.default_for(True)!r}, others on "
                         f"{_backends.default_for(False)!r}).")
    assert isinstance(backend, str)
    cls = _backends.backend_class(backend)
    if not (cls.runs_coroutines if coroutine else cls.runs_functions):
        raise TypeError(cls.refusal(_name(fn), where, coroutine=coroutine,
                                    instead=_backends.default_for(coroutine)))
    return backend


def check_options(where: str, **options: Any) -> Options:
    """Validate every ``map`` option before any work starts; return them normalised
    (the ones not given take their defaults)."""
    return Options(**map_fields(where, options))


def _backend_and_workers(where: str, backend: str | None, fn: object,
                         workers: int | None) -> tuple[str, int | None]:
    """The backend's name and its workers (None: the backend counts them, as dask does)."""
    name = resolve_backend(backend, fn, where)
    if workers is None:
        return name, _backends.default_workers(name)
    return name, positive_int(workers, "workers", where)


def check_items(items: object, where: str, *, allow_async: bool = False) -> None:
    if isinstance(items, Iterable):
        return
    if allow_async and isinstance(items, AsyncIterable):
        return
    kinds = "an iterable or an async iterable" if allow_async else "an iterable"
    raise TypeError(f"{where}: items must be {kinds} (a list, a generator, ...), got "
                    f"{type(items).__name__}")


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def check_worker_options(where: str, name: str, given: dict[str, Any], *,
                         pool: bool = False) -> dict[str, Any]:
    """The worker options ``given`` for backend ``name``, checked, as keyword
    arguments for ``_backends.create``: those its class takes (see
    ``Capabilities.options``), the defaults filled in.

    Raises ``ImportError`` if the backend's modules are missing, and
    ``ValueError`` for an option given that the backend does not take, naming
    the backends that do. ``pool``: ``Pool``'s own options are allowed too.
    """
    cls = _backends.backend_class(name)
    cls.check_available()   # not installed: say how, before anything else
    out: dict[str, Any] = {}
    for o in by_kind("worker", "pool") if pool else by_kind("worker"):
        value = given.get(o.name, o.default)
        takes = o.name in cls.options
        if not takes and not o.everywhere:
            if value is not o.default and value != o.default:
                raise _not_taken(where, o.name, o.summary, name)
            continue
        value = o.check(value, o.name, where)
        if takes:
            out[o.name] = value
    return out


def _not_taken(where: str, option: str, summary: str, name: str) -> ValueError:
    others = " or ".join(repr(b) for b in _backends.taking(option)) or "none of them"
    return ValueError(f"{where}: {option}= {summary}; it needs backend={others} (got "
                      f"backend={name!r}). Use one of them, or leave {option}= out.")


def _run_options(where: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of a map, as given; a TypeError for unknown names."""
    unknown = set(options) - set(_RUN_OPTIONS)
    if unknown:
        raise unknown_options(where, unknown, _RUN_OPTIONS)
    return options


class _AsyncStar(Star):
    async def __call__(self, args: tuple[Any, ...]) -> Any:
        return await super().__call__(args)   # the call spreads args; the await runs it


def spread(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    """``fn(*item)`` for each item (awaited for a coroutine function), as ``starmap``."""
    return _AsyncStar(fn) if is_async_fn(fn) else Star(fn)


def zip_items(fn: Callable[..., Any], iterables: tuple[Any, ...], where: str,
              *, allow_async: bool = False) -> tuple[Callable[[Any], Any], Any]:
    """``(fn, items)`` for a map over ``iterables``: as they are for one iterable,
    else ``fn(*args)`` over the zipped tuples, as the builtin ``map`` does."""
    if not iterables:
        raise TypeError(f"{where}: no items given; pass the function and at least one "
                        f"iterable, e.g. {where}(fetch, urls)")
    if len(iterables) == 1:
        check_items(iterables[0], where, allow_async=allow_async)
        return fn, iterables[0]
    kinds = "an iterable or an async iterable" if allow_async else "an iterable"
    for i, items in enumerate(iterables):
        if not (isinstance(items, Iterable)
                or (allow_async and isinstance(items, AsyncIterable))):
            raise TypeError(f"{where}: iterable {i} must be {kinds} (a list, a generator, "
                            f"...), got {type(items).__name__}; with several iterables, "
                            "fn(*args) gets one item of each")
    if all(isinstance(items, Iterable) for items in iterables):
        return spread(fn), Zipped(iterables)
    return spread(fn), AsyncZipped(iterables)


def start_run(fn: Callable[[Any], Any], items: Iterable[Any] | AsyncIterable[Any],
              backend: Backend, *, owns_backend: bool, options: Options,
              where: str, loop: asyncio.AbstractEventLoop | None = None,
              memory: Memory | None = None) -> Run:
    """Start a run of ``fn`` over ``items`` (an async iterable: pumped on ``loop``;
    ``memory``: the batch sizes a Pool learned)."""
    try:
        backend.prepare(fn, where)   # e.g. a function processes cannot receive: before any work
        source: Iterator[Any] | Source
        if not isinstance(items, Iterable):
            assert loop is not None, "an async iterable needs amap's event loop"
            source = AsyncSource(items, loop)
        elif reads_directly(items) or (isinstance(items, Zipped) and items.direct):
            source = iter(items)
        else:
            source = ThreadSource(items)
        # e.g. tqdm refusing the progress options
        run = new_run(fn, source, length_of(items), backend, owns_backend=owns_backend,
                      options=options, memory=memory)
    except BaseException:
        if owns_backend:
            backend.close(cancel=True)   # e.g. the cluster a dask backend started
        raise
    run.start()
    return run


def _start(where: str, fn: Callable[..., Any], iterables: tuple[Any, ...],
           options: dict[str, Any], *, star: bool = False,
           loop: asyncio.AbstractEventLoop | None = None) -> Run:
    """What ``map``, ``starmap``, ``amap`` and ``astarmap`` share: check every
    argument before any work starts, then start the run (on ``loop``: ``amap``)."""
    check_fn(fn, where)
    opts = _run_options(where, options)
    call, items = zip_items(fn, iterables, where, allow_async=loop is not None)
    if star:
        call = spread(call)
    name, n_workers = _backend_and_workers(where, opts.get("backend"), fn,
                                           opts.get("workers"))
    checked = check_options(where, **{k: v for k, v in opts.items() if k in MAP_DEFAULTS})
    extra = check_worker_options(where, name, opts)
    if loop is not None and "loop" in _backends.backend_class(name).options:
        extra["loop"] = loop   # amap: coroutines run on the caller's loop
    be = _backends.create(name, n_workers, **extra)
    if loop is not None:
        be.start()
    return start_run(call, items, be, owns_backend=True, options=checked, where=where,
                     loop=loop)


def _running_loop(where: str, sync_name: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(f"{where} must be used from async code (with an event loop "
                           f"running); from sync code, use {sync_name}.") from None


@overload
def map(fn: Callable[[T], Awaitable[R]], items: Iterable[T], /,
        **options: Unpack[RunOptions]) -> Results[R]: ...
@overload
def map(fn: Callable[[T], R], items: Iterable[T], /,
        **options: Unpack[RunOptions]) -> Results[R]: ...
@overload
def map(fn: Callable[[T, T2], Awaitable[R]], items: Iterable[T], items2: Iterable[T2], /,
        **options: Unpack[RunOptions]) -> Results[R]: ...
@overload
def map(fn: Callable[[T, T2], R], items: Iterable[T], items2: Iterable[T2], /,
        **options: Unpack[RunOptions]) -> Results[R]: ...
@overload
def map(fn: Callable[[T, T2, T3], Awaitable[R]], items: Iterable[T], items2: Iterable[T2],
        items3: Iterable[T3], /, **options: Unpack[RunOptions]) -> Results[R]: ...
@overload
def map(fn: Callable[[T, T2, T3], R], items: Iterable[T], items2: Iterable[T2],
        items3: Iterable[T3], /, **options: Unpack[RunOptions]) -> Results[R]: ...
@overload
def map(fn: Callable[..., Awaitable[R]], items: Iterable[Any], items2: Iterable[Any],
        items3: Iterable[Any], items4: Iterable[Any], /, *more: Iterable[Any],
        **options: Unpack[RunOptions]) -> Results[R]: ...
@overload
def map(fn: Callable[..., R], items: Iterable[Any], items2: Iterable[Any],
        items3: Iterable[Any], items4: Iterable[Any], /, *more: Iterable[Any],
        **options: Unpack[RunOptions]) -> Results[R]: ...
def map(fn: Callable[..., Any], /, *iterables: Iterable[Any], **options: Any) -> Results[Any]:
    """Run ``fn`` over ``items`` concurrently; stream the results.

    ``conveyor.map(fn, items, **options)``; with several iterables,
    ``conveyor.map(pow, xs, ys)`` calls ``fn(x, y)`` for their items taken in
    step, up to the shortest, as the builtin ``map`` does (see also
    :func:`starmap`). Every option is keyword-only.

    Returns a :class:`Results`: iterate it for the results (input order when
    ``ordered=True``, completion order otherwise), use it as a context manager,
    ``close()`` it to stop early, read ``.stats``. Work starts at once in the
    background; the input is read lazily, at most ``window`` items ahead.

    ``backend``: "thread" (blocking code; the default for plain functions),
    "asyncio" (the default for coroutine functions, which run on an event loop
    in a helper thread, so this works inside Jupyter's running loop too) or
    "process" (CPU-bound Python: supervised worker processes; a crash fails
    only its task, a timeout kills the task's process group) or "dask" (a
    dask.distributed cluster: ``cluster`` is a ``distributed.Client``, a
    scheduler address or a cluster object; without it, the current Client if
    there is one, else a LocalCluster started for the call).
    ``workers``: threads, coroutines or processes. ``batch``: "auto" (adaptive:
    "What runs when" in docs/design/architecture.md) or a fixed number of
    items per batch. ``timeout``: seconds per task; an overdue coroutine is
    cancelled, an overdue thread call is abandoned; either way that item fails
    with ``TaskTimeout``. ``retries``: extra attempts for failures matching
    ``retry_on``, after an exponential
    backoff (``backoff`` * 2**attempt seconds, jittered by +/-50%).
    ``on_error``: "raise" the first failure (after the results before it, in
    ordered mode) and cancel the rest; "return" the exception in the result's
    place; "skip" it (counted in ``stats``). ``rate``: at most this many task
    starts per second, evenly spaced. ``progress``: a tqdm bar counting items
    (True, or a dict of tqdm options); ``desc`` labels it. ``initializer(*initargs)``
    runs once in each worker as it starts (see ``conveyor.worker_state``);
    ``max_tasks_per_worker`` (processes) replaces a worker after that many tasks.
    ``forward_logs``: records logged in process and dask workers are handled by
    this process's logging, with ``record.conveyor_index`` (the item's input
    index) and ``record.conveyor_pid``; False leaves them in the workers.

    Raises ``TypeError``/``ValueError`` before any work starts for a bad
    argument (a non-callable, no iterable, an unknown option, ``workers=0``...).
    """
    return Results(_start("conveyor.map", fn, iterables, options))


@overload
def starmap(fn: Callable[..., Awaitable[R]], items: Iterable[Iterable[Any]], /,
            **options: Unpack[RunOptions]) -> Results[R]: ...
@overload
def starmap(fn: Callable[..., R], items: Iterable[Iterable[Any]], /,
            **options: Unpack[RunOptions]) -> Results[R]: ...
def starmap(fn: Callable[..., Any], items: Iterable[Iterable[Any]], /,
            **options: Any) -> Results[Any]:
    """:func:`map` calling ``fn(*item)``: each item holds the function's arguments.

    ``conveyor.starmap(pow, [(2, 5), (3, 2)])`` gives 32, 9, as
    ``itertools.starmap`` does. Options as for :func:`map`. An item that is
    not iterable fails its own task with a ``TypeError`` (whose note names
    the item's index), handled as ``on_error`` says.
    """
    return Results(_start("conveyor.starmap", fn, (items,), options, star=True),
                   where="conveyor.starmap")


@overload
def amap(fn: Callable[[T], Awaitable[R]], items: Iterable[T] | AsyncIterable[T], /,
         **options: Unpack[RunOptions]) -> AsyncResults[R]: ...
@overload
def amap(fn: Callable[[T], R], items: Iterable[T] | AsyncIterable[T], /,
         **options: Unpack[RunOptions]) -> AsyncResults[R]: ...
@overload
def amap(fn: Callable[[T, T2], Awaitable[R]], items: Iterable[T] | AsyncIterable[T],
         items2: Iterable[T2] | AsyncIterable[T2], /,
         **options: Unpack[RunOptions]) -> AsyncResults[R]: ...
@overload
def amap(fn: Callable[[T, T2], R], items: Iterable[T] | AsyncIterable[T],
         items2: Iterable[T2] | AsyncIterable[T2], /,
         **options: Unpack[RunOptions]) -> AsyncResults[R]: ...
@overload
def amap(fn: Callable[[T, T2, T3], Awaitable[R]], items: Iterable[T] | AsyncIterable[T],
         items2: Iterable[T2] | AsyncIterable[T2], items3: Iterable[T3] | AsyncIterable[T3],
         /, **options: Unpack[RunOptions]) -> AsyncResults[R]: ...
@overload
def amap(fn: Callable[[T, T2, T3], R], items: Iterable[T] | AsyncIterable[T],
         items2: Iterable[T2] | AsyncIterable[T2], items3: Iterable[T3] | AsyncIterable[T3],
         /, **options: Unpack[RunOptions]) -> AsyncResults[R]: ...
@overload
def amap(fn: Callable[..., Awaitable[R]], items: Iterable[Any] | AsyncIterable[Any],
         items2: Iterable[Any] | AsyncIterable[Any], items3: Iterable[Any] | AsyncIterable[Any],
         items4: Iterable[Any] | AsyncIterable[Any], /,
         *more: Iterable[Any] | AsyncIterable[Any],
         **options: Unpack[RunOptions]) -> AsyncResults[R]: ...
@overload
def amap(fn: Callable[..., R], items: Iterable[Any] | AsyncIterable[Any],
         items2: Iterable[Any] | AsyncIterable[Any], items3: Iterable[Any] | AsyncIterable[Any],
         items4: Iterable[Any] | AsyncIterable[Any], /,
         *more: Iterable[Any] | AsyncIterable[Any],
         **options: Unpack[RunOptions]) -> AsyncResults[R]: ...
def amap(fn: Callable[..., Any], /, *iterables: Iterable[Any] | AsyncIterable[Any],
         **options: Any) -> AsyncResults[Any]:
    """``map`` for async code: ``async for r in conveyor.amap(fn, items): ...``.

    Must be called with an event loop running. Coroutine functions run as
    tasks on *that* loop; plain functions run on worker threads (never
    blocking the loop). Any of the iterables may be async; several are
    zipped as :func:`map` does, on the event loop (so the plain iterables
    among async ones must not block). Options as for :func:`map`.
    """
    loop = _running_loop("conveyor.amap", "conveyor.map")
    return AsyncResults(_start("conveyor.amap", fn, iterables, options, loop=loop))


@overload
def astarmap(fn: Callable[..., Awaitable[R]],
             items: Iterable[Iterable[Any]] | AsyncIterable[Iterable[Any]], /,
             **options: Unpack[RunOptions]) -> AsyncResults[R]: ...
@overload
def astarmap(fn: Callable[..., R], items: Iterable[Iterable[Any]] | AsyncIterable[Iterable[Any]],
             /, **options: Unpack[RunOptions]) -> AsyncResults[R]: ...
def astarmap(fn: Callable[..., Any],
             items: Iterable[Iterable[Any]] | AsyncIterable[Iterable[Any]], /,
             **options: Any) -> AsyncResults[Any]:
    """:func:`starmap` for async code, as :func:`amap` is :func:`map`'s:
    ``async for r in conveyor.astarmap(fetch, pairs): ...``."""
    loop = _running_loop("conveyor.astarmap", "conveyor.starmap")
    return AsyncResults(_start("conveyor.astarmap", fn, (items,), options, star=True,
                               loop=loop), where="conveyor.astarmap")
