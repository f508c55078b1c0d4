"""``conveyor.stream``: stages with their own backend and width, bounded between them.

::

    stream(urls) --map(download, threads)--> --map(parse, processes)--> --filter--> for r in ...

Each ``map``/``filter``/``flat_map`` stage is one run of the engine
(``conveyor.map`` with that stage's options); its input is the previous
stage's results, read by the run's input pump within the run's window. So the
windows are the bounded queues between stages, and a slow last stage holds
back every stage before it. ``batch``/``unbatch`` regroup items on the way and
run no tasks.

Ending: the consumer's loop ending (the last result, ``break``, an exception,
``close()``, Ctrl-C) closes every stage's run, last first. A stage's failure
(``on_error="raise"``) travels down the chain as the next stages' input error
and reaches the consumer with a note naming the stage.

Warnings: the stages' runs are conveyor's own (they warn about nothing); the
pipeline warns as a ``Results`` does (``UnreadResultsWarning`` when it is
dropped unread, ``BlockingCallWarning`` for a sync loop inside a coroutine),
and so does a ``Stream`` with stages that is dropped without ever being run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Iterator
from typing import Any, Generic, TypeVar, overload

from . import _api, _backends
from ._engine.policy import add_note
from ._options import by_kind, positive_int
from ._progress import Counted, Stats
from ._results import Results, _aiterate, _consumed
from ._slips import Usage, unknown_options, warn_if_blocking, warn_unread
from ._stages import ATAIL, Expand, Keep, Stage, batched, flatten, stage_total
from ._zipped import length_of

__all__ = ["Pipeline", "Stream", "stream"]

T = TypeVar("T")
R = TypeVar("R")

_STAGE_OPTIONS = tuple(o.name for o in (*by_kind("run"), *by_kind("map"), *by_kind("worker")))


class Stream(Generic[T]):
    """A pipeline being described: add stages, then iterate it (each iteration runs it).

    ``stream(items).map(f, workers=16).map(g, backend="process").filter(p)``.
    Every stage takes the options of :func:`conveyor.map` (its own backend,
    workers, window, ordered, timeout, retries, on_error, rate...) and a
    ``name`` for messages and stats (default: the function's name).

    A stream runs only when it is iterated (or ``wait()``/``to_list()``); one
    with stages that is dropped without ever being run, nor extended with
    another stage, warns :class:`~conveyor.errors.UnreadResultsWarning` at the
    line that added its last stage.
    """

    def __init__(self, items: Iterable[Any], stages: tuple[Stage, ...] = (),
                 progress: bool = False) -> None:
        self._items = items
        self._stages = stages
        self._progress = progress
        self._usage = Usage("conveyor.stream")
        if stages:
            weakref.finalize(self, _never_run, self._usage, [s.name for s in stages])

    def _add(self, stage: Stage) -> Stream[Any]:
        self._usage.quiet = True   # the longer stream is the one to run
        return Stream(self._items, (*self._stages, stage), self._progress)

    def _task_stage(self, kind: str, fn: Callable[[Any], Any], name: str | None,
                    options: dict[str, Any]) -> Stream[Any]:
        where = f"conveyor.stream(...).{kind}"
        _api.check_fn(fn, where)
        unknown = set(options) - set(_STAGE_OPTIONS)
        if unknown:
            raise unknown_options(where, unknown, ("name", *_STAGE_OPTIONS))
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{where}: name must be a string, got {name!r}")
        # Check the options now, while the pipeline is being described.
        _api.check_options(where, **{k: v for k, v in options.items() if k in _api.MAP_DEFAULTS})
        backend, _ = _api._backend_and_workers(where, options.get("backend"), fn,
                                               options.get("workers"))
        if not _backends.backend_class(backend).runs_functions and kind not in ("map", "starmap"):
            raise TypeError(f"{where}: {kind} stages run plain functions (on threads or "
                            f"processes); use map with a coroutine function for {backend}")
        label = name or getattr(fn, "__qualname__", None) or repr(fn)
        return self._add(Stage(kind, fn, f"{kind} {label}", dict(options)))

    @overload
    def map(self, fn: Callable[[T], Awaitable[R]], *, name: str | None = ...,
            **options: Any) -> Stream[R]: ...
    @overload
    def map(self, fn: Callable[[T], R], *, name: str | None = ...,
            **options: Any) -> Stream[R]: ...
    def map(self, fn: Callable[[T], Any], *, name: str | None = None,
            **options: Any) -> Stream[Any]:
        """Each item becomes ``fn(item)`` (options as for :func:`conveyor.map`)."""
        return self._task_stage("map", fn, name, options)

    @overload
    def starmap(self, fn: Callable[..., Awaitable[R]], *, name: str | None = ...,
                **options: Any) -> Stream[R]: ...
    @overload
    def starmap(self, fn: Callable[..., R], *, name: str | None = ...,
                **options: Any) -> Stream[R]: ...
    def starmap(self, fn: Callable[..., Any], *, name: str | None = None,
                **options: Any) -> Stream[Any]:
        """Each item (a tuple of arguments) becomes ``fn(*item)``, as
        :func:`conveyor.starmap`; an item that is not iterable fails its task
        with a ``TypeError`` (options as for :func:`conveyor.map`)."""
        return self._task_stage("starmap", fn, name, options)

    def filter(self, pred: Callable[[T], Any], *, name: str | None = None,
               **options: Any) -> Stream[T]:
        """Keep the items for which ``pred(item)`` is true (run on the stage's workers)."""
        return self._task_stage("filter", pred, name, options)

    def flat_map(self, fn: Callable[[T], Iterable[R]], *, name: str | None = None,
                 **options: Any) -> Stream[R]:
        """Each item becomes the items of ``fn(item)`` (an iterable), in order."""
        return self._task_stage("flat_map", fn, name, options)

    def batch(self, n: int) -> Stream[list[T]]:
        """Group consecutive items into lists of ``n`` (the last may be shorter)."""
        size = positive_int(n, "n", "conveyor.stream(...).batch")
        return self._add(Stage("batch", None, f"batch {size}", {}, size))

    def unbatch(self) -> Stream[Any]:
        """Each item (an iterable) becomes its items."""
        return self._add(Stage("unbatch", None, "unbatch", {}))

    def open(self) -> Pipeline[T]:
        """Start every stage; iterate the returned pipeline for the results."""
        self._usage.quiet = True
        stages = self._stages
        if self._progress:   # one bar per task stage, labelled with its name
            stages = tuple(
                s if s.kind in ("batch", "unbatch") or "progress" in s.options
                else Stage(s.kind, s.fn, s.name, {**s.options, "progress": True}, s.size)
                for s in stages)
        return Pipeline(self._items, stages)

    def __iter__(self) -> Iterator[T]:
        return iter(self.open())

    def __aiter__(self) -> AsyncGenerator[T, None]:
        return self.open().__aiter__()

    def to_list(self) -> list[T]:
        """Run the pipeline to the end; its results as a list."""
        with self.open() as pipeline:
            return list(pipeline)

    def wait(self) -> dict[str, Stats]:
        """Run the pipeline to the end, discarding its results; each stage's final stats.

        See :meth:`Pipeline.wait` for who raises what.
        """
        with self.open() as pipeline:
            return pipeline.wait()


def _never_run(usage: Usage, stages: list[str]) -> None:
    if usage.unread:
        warn_unread(usage, f"a stream ({', '.join(stages)})",
                    "A stream runs when it is iterated: iterate it (for x in s: ...), or "
                    "call s.wait() to run it and discard the results.", ran=None)


def stream(items: Iterable[T], *, progress: bool = False) -> Stream[T]:
    """Start describing a pipeline over ``items`` (any iterable, read lazily).

    ``progress=True`` shows one progress bar per task stage, labelled with the
    stage's name (a stage's own ``progress=`` option wins).
    """
    _api.check_items(items, "conveyor.stream")
    if not isinstance(progress, bool):
        raise TypeError(f"conveyor.stream: progress must be True or False, got {progress!r}")
    return Stream(items, progress=progress)


class Pipeline(Generic[T]):
    """A running pipeline: iterate it once; ``close()`` stops every stage.

    As a :class:`~conveyor.Results`: a loop left early goes on in the next
    loop; once it has ended (or was closed) ``iter()`` raises
    :class:`~conveyor.errors.ResultsConsumed`; dropped without ever being
    iterated, waited for or closed, it warns
    :class:`~conveyor.errors.UnreadResultsWarning`; a sync loop (or
    ``wait()``) inside a coroutine warns
    :class:`~conveyor.errors.BlockingCallWarning` (use ``async for``).
    """

    def __init__(self, items: Iterable[Any], stages: tuple[Stage, ...]) -> None:
        self._usage = Usage("conveyor.stream")
        self._closed = False
        self._runs: list[tuple[str, Results[Any]]] = []
        # What follows the last task stage (filter's keep, flat_map's expand,
        # batch, unbatch): `async for` applies it to that run's results itself.
        self._tail: list[tuple[str, int]] = []
        it: Iterable[Any] = items
        total = length_of(items)
        try:
            for stage in stages:
                if stage.kind not in ("batch", "unbatch") and it is not items \
                        and total is not None:
                    it = Counted(it, total)   # the stage's bar (and last batches) know it
                it = self._open(stage, it)
                total = stage_total(stage, total)
        except BaseException:
            self.close()
            raise
        # The generator holds the runs, never this object: `for x in stream(...)`
        # keeps only the generator, and dropping it (an early break) stops them.
        self._gen = _iterate(it, self._runs, self._usage)
        weakref.finalize(self, _dropped, self._usage, self._runs)

    def _open(self, stage: Stage, it: Iterable[Any]) -> Iterable[Any]:
        if stage.kind == "batch":
            self._tail.append(("batch", stage.size))
            return batched(it, stage.size)
        if stage.kind == "unbatch":
            self._tail.append(("flatten", 0))
            return flatten(it)
        assert stage.fn is not None
        fn: Callable[[Any], Any] = stage.fn
        if stage.kind == "filter":
            fn = Keep(fn)
        elif stage.kind == "flat_map":
            fn = Expand(fn)
        elif stage.kind == "starmap":
            fn = _api.spread(fn)
        options = dict(stage.options)
        options.setdefault("desc", stage.name)
        results = _api.map(fn, it, **options)
        results._silence()
        self._runs.append((stage.name, results))
        self._tail = []
        out: Iterable[Any] = _named(results, stage.name)
        if stage.kind == "filter":
            self._tail.append(("keep", 0))
            out = (x for keep, x in out if keep)
        elif stage.kind == "flat_map":
            self._tail.append(("flatten", 0))
            out = flatten(out)
        return out

    def __iter__(self) -> Generator[T, None, None]:
        self._begin()
        return self._gen

    def __next__(self) -> T:
        if not self._usage.read:
            self._begin()
        value: T = next(self._gen)
        return value

    def _begin(self) -> None:
        """A sync read: it must not have ended, and should not block a loop."""
        usage = self._usage
        if usage.ended:
            raise _consumed("conveyor.stream", self._closed, "values = list(pipeline)")
        if not usage.read:
            usage.read = True
            warn_if_blocking("conveyor.stream", "Use `async for x in conveyor.stream(...)` "
                             "in async code.")

    def wait(self) -> dict[str, Stats]:
        """Run to the end, discarding the results; each task stage's final stats.

        The error policy of each stage applies as when iterating: a stage's
        failure with ``on_error="raise"`` is raised here (with a note naming
        the stage) and every stage is stopped; ``"return"`` and ``"skip"``
        raise nothing. On a pipeline that has ended, it returns the stats at
        once. ``KeyboardInterrupt`` stops every stage and propagates.
        """
        if not self._usage.ended:
            self._begin()
            collections.deque(self._gen, maxlen=0)
        return self.stats

    def __enter__(self) -> Pipeline[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Pipeline[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """:meth:`close` for async code: the waiting happens in a helper thread."""
        await asyncio.to_thread(self.close)

    async def __aiter__(self) -> AsyncGenerator[T, None]:
        """Iterate from async code; waiting for results never blocks the event loop.

        The last task stage's results are awaited directly (no thread per
        item); what follows it (filter, flat_map, batch, unbatch) is applied
        here. Closing the stages at the end happens in a helper thread.
        """
        usage = self._usage
        if usage.ended:
            raise _consumed("conveyor.stream", self._closed,
                            "values = [x async for x in pipeline]")
        usage.read = True
        if not self._runs:   # no task stage: the items themselves may block
            end: Any = object()
            try:
                while True:
                    x: Any = await asyncio.to_thread(next, self._gen, end)
                    if x is end:
                        return
                    yield x
            finally:
                usage.ended = True
                await asyncio.to_thread(_close, self._runs)
        name, results = self._runs[-1]
        out: AsyncGenerator[Any, None] = _anamed(results, name)
        for op, size in self._tail:
            out = ATAIL[op](out, size)
        try:
            async for x in out:
                yield x
        finally:
            usage.ended = True
            await out.aclose()
            await asyncio.to_thread(_close, self._runs)

    def close(self) -> None:
        """Stop every stage (the last first) and wait until they have stopped."""
        self._usage.quiet = self._usage.ended = self._closed = True
        _close(self._runs)

    @property
    def stats(self) -> dict[str, Stats]:
        """Each task stage's statistics, by stage name, in pipeline order."""
        out: dict[str, Stats] = {}
        for i, (name, results) in enumerate(self._runs):
            key = name if name not in out else f"{name} #{i + 1}"
            out[key] = results.stats
        return out


def _dropped(usage: Usage, runs: list[tuple[str, Results[Any]]]) -> None:
    """The pipeline was dropped (or the interpreter exits): warn if nobody read it.
    (Dropping its stages' results stops them.)"""
    if usage.unread and runs:
        name, first = runs[0]
        s = first.stats
        warn_unread(usage, f"a pipeline (its first stage {name!r})",
                    "Iterate it (for x in pipeline: ...), or call pipeline.wait() to run it "
                    "to the end; close() it (or use `with`) to stop it on purpose.",
                    ran=s.done + s.failed, failed=s.failed, total=first._run.total,
                    finished=all(results._run.finished for _, results in runs))


def _iterate(it: Iterable[Any], runs: list[tuple[str, Results[Any]]],
             usage: Usage) -> Generator[Any, None, None]:
    wait = True
    try:
        yield from it
    except (KeyboardInterrupt, SystemExit):
        wait = False   # Ctrl-C: stop every stage, without waiting for thread calls
        raise
    finally:
        usage.ended = True
        _close(runs, wait=wait)


def _close(runs: list[tuple[str, Results[Any]]], *, wait: bool = True) -> None:
    for _, results in reversed(runs):
        if wait:
            results.close()
        else:
            results._run.close(wait=False)


def _mark(exc: BaseException, name: str) -> None:
    """Name the stage a failure came from (once: the first stage it left)."""
    if not getattr(exc, "__conveyor_stage__", None):
        add_note(exc, f"conveyor: raised in the pipeline stage '{name}'")
        with contextlib.suppress(Exception):   # a type that refuses attributes
            exc.__conveyor_stage__ = name  # type: ignore[attr-defined]


def _named(results: Results[Any], name: str) -> Generator[Any, None, None]:
    """The stage's results; a failure gets a note naming the stage."""
    wait = True
    try:
        yield from results
    except Exception as exc:
        _mark(exc, name)
        raise
    except (KeyboardInterrupt, SystemExit):
        wait = False
        raise
    finally:
        if wait:
            results.close()
        else:
            results._run.close(wait=False)


async def _anamed(results: Results[Any], name: str) -> AsyncGenerator[Any, None]:
    """:func:`_named` for ``async for``: awaits the run's results on the event loop."""
    agen = _aiterate(results._run)
    try:
        async for x in agen:
            yield x
    except Exception as exc:
        _mark(exc, name)
        raise
    finally:
        await agen.aclose()
