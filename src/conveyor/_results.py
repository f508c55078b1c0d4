"""What ``map`` and ``amap`` return: a stream of results over a running ``Run``."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import weakref
from collections.abc import AsyncGenerator, Generator, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from types import AsyncGeneratorType, GeneratorType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from ._engine import Run
from ._outbox import End
from ._progress import Stats
from ._slips import Usage, warn_if_blocking, warn_unread
from .errors import ResultsConsumed

__all__ = ["AsyncResults", "Results"]

R = TypeVar("R")


class Results(Generic[R]):
    """The results of ``conveyor.map``: an iterator, streamed as tasks finish.

    * Iterate it (once) to get results: in input order with ``ordered=True``,
      else as they complete. Work starts at once, in the background, and at
      most ``window`` items are taken from the input ahead of what you have
      consumed.
    * ``close()`` stops the run: nothing new starts, queued work is dropped,
      running coroutines are cancelled, and ``close`` returns once the run's
      workers are idle (a thread call already running is waited for, since a
      thread cannot be interrupted). Leaving a ``with`` block closes it, and so
      does an early ``break`` once the object is garbage collected (at once
      for ``for r in conveyor.map(...)``).
    * On Ctrl-C while waiting for a result, the run is cancelled without
      waiting for thread calls already running (they finish in the
      background, starting nothing new), and ``KeyboardInterrupt`` propagates.
    * ``wait()`` runs it to its end without keeping the values.
    * ``stats`` is a live :class:`~conveyor.Stats` snapshot.

    **Iterating again.** A loop left early (``break``) is not the end: the next
    loop (or ``next()``) goes on where it stopped, as with a generator or a
    file. Once the results have ended (the last one handed out, an error
    raised, or ``close()``), ``iter()`` raises
    :class:`~conveyor.errors.ResultsConsumed` (a ``RuntimeError``) instead of
    giving an empty loop; ``next()`` raises ``StopIteration``, as any
    iterator's.

    **Unread results.** Results that are never iterated, waited for or closed
    warn (:class:`~conveyor.errors.UnreadResultsWarning`, at the line that
    called ``map``) when they are dropped, garbage collected or at the
    interpreter's exit: dropping them stops the run, so most items never ran.
    A loop left early, ``close()`` and ``with`` are deliberate and never warn.
    Iterating inside a coroutine warns
    :class:`~conveyor.errors.BlockingCallWarning` (it blocks the event loop;
    use ``conveyor.amap``), except at a notebook cell's top level.
    """

    def __init__(self, run: Run, *, where: str = "conveyor.map") -> None:
        self._run = run
        self._usage = Usage(where)
        self._closed = False
        # The generator holds the run, never this object: `for r in map(...)`
        # keeps only the generator alive, and dropping it (an early `break`)
        # closes the run at once.
        self._gen: Generator[R, None, None] = _iterate(run)
        self._dropped = weakref.finalize(self._gen, _drop, run, self._usage, *_SYNC_FIX)

    def __iter__(self) -> Generator[R, None, None]:
        if not self._usage.read:
            self._first_read()
        gen = self._gen
        if _ended(gen):
            raise _consumed(self._usage.where, self._closed, "values = list(results)")
        return gen

    def __next__(self) -> R:
        if not self._usage.read:
            self._first_read()
        return next(self._gen)

    def _first_read(self) -> None:
        self._usage.read = True
        if not self._usage.internal:
            warn_if_blocking(self._usage.where, "Use `async for r in conveyor.amap(...)` in "
                             "async code, or consume the results in a thread "
                             "(`await asyncio.to_thread(results.wait)`).")

    def _silence(self) -> None:
        """No warnings about these results: a pipeline's stage (the pipeline warns
        instead), or a drop-in executor's map (the stdlib's warns about nothing)."""
        self._usage.internal = self._usage.quiet = True

    def __enter__(self) -> Results[R]:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is not None and issubclass(et, (KeyboardInterrupt, SystemExit)):
            self._usage.quiet = True
            self._run.close(wait=False)   # Ctrl-C: don't wait for running thread calls
            return
        self.close()

    @property
    def stats(self) -> Stats:
        """A :class:`Stats` snapshot of the run's counters, taken now: while the
        run goes, or once it has ended (its final counts)."""
        return self._run.stats()

    def wait(self) -> Stats:
        """Run to the end, discarding the values; return the final :class:`~conveyor.Stats`.

        For work done for its effects: ``conveyor.map(save, items).wait()``.
        The error policy applies as when iterating: with ``on_error="raise"``
        the first failure is raised here (its own type, with the failing
        item's index in a note) and the rest of the run is cancelled;
        ``"return"`` and ``"skip"`` raise nothing (failures are counted in the
        stats). After a partial loop it runs what is left; on results that
        have ended it returns their stats at once. ``KeyboardInterrupt``
        cancels the run and propagates.
        """
        if not self._usage.read:
            self._first_read()
        gen = self._gen
        if not _ended(gen):
            collections.deque(gen, maxlen=0)   # a C loop: nothing per item here
        self._run.wait_finished()   # after close(wait=False): until the counters are final
        return self._run.stats()

    def until(self, deadline: float | None) -> Generator[R, None, None]:
        """The results (instead of iterating this object), raising
        ``concurrent.futures.TimeoutError`` once ``time.monotonic()`` passes
        ``deadline`` (the executors' ``map(timeout=)``)."""
        self._usage.read = True
        alive = self._dropped.detach() is not None
        self._gen = _iterate(self._run, deadline)
        self._dropped = weakref.finalize(self._gen, _drop, self._run, self._usage, *_SYNC_FIX)
        if not alive:
            self._dropped.detach()   # keep_running() was called
        return self._gen

    def keep_running(self) -> None:
        """Dropped without being read, the run goes on to its end (the executors'
        eager ``map``); by default dropping it stops the run."""
        self._usage.quiet = True
        self._dropped.detach()

    def close(self, *, wait: bool = True, now: bool = False) -> None:
        """Cancel the run (if it is still going) and wait until it has stopped.

        May be called from another thread while a loop is iterating: that loop
        then ends after the results it already holds. ``wait=False``: stop it
        without waiting for calls already running. ``now``: also mark its
        batches cancelled from this thread, so that none starts meanwhile.
        """
        self._usage.quiet = self._closed = True
        if now:
            self._run.cancel_batches()
        self._run.close(wait=wait)
        # ValueError: another thread is inside the generator right now; it
        # sees the end of the run and finishes on its own.
        with contextlib.suppress(ValueError):
            self._gen.close()

    def __repr__(self) -> str:
        return _repr("Results", self._run, self._usage, ".wait()")


#: What was dropped unread, and how to do it right (sync, async).
_SYNC_FIX = ("a Results", "Iterate the results (for r in results: ...), or call "
             "results.wait() to run every item and discard the values; close() them (or "
             "use `with`) to stop a run on purpose.")
_ASYNC_FIX = ("an AsyncResults", "Iterate the results (async for r in results: ...), or "
              "`await results.wait()` to run every item and discard the values; aclose() "
              "them (or use `async with`) to stop a run on purpose.")


def _drop(run: Run, usage: Usage, what: str, fix: str) -> None:
    """The results were dropped (or the interpreter exits): stop the run, and warn
    if nobody ever read them."""
    try:
        if usage.unread:
            s = run.stats()
            warn_unread(usage, what, fix, ran=s.done + s.failed, failed=s.failed,
                        total=run.total, finished=run.finished)
    finally:   # also when the warning is an error (-W error)
        run.close(wait=False)


def _repr(kind: str, run: Run, usage: Usage, wait: str) -> str:
    # A notebook shows the repr of a map left as a cell's last expression (and
    # keeps it alive, so no warning comes): say there that it waits to be read.
    s = run.stats()
    unread = f" (unread: iterate it, or call {wait})" if usage.unread else ""
    return (f"<conveyor.{kind} backend={s.backend!r} done={s.done} failed={s.failed} "
            f"in_flight={s.in_flight}{unread}>")


def _ended(gen: Generator[Any, None, None] | AsyncGenerator[Any, None]) -> bool:
    """Whether a generator has returned, raised or been closed (then it has no frame)."""
    if isinstance(gen, GeneratorType):
        return gen.gi_frame is None
    assert isinstance(gen, AsyncGeneratorType)
    return gen.ag_frame is None


def _consumed(where: str, closed: bool, keep: str) -> ResultsConsumed:
    if closed:
        return ResultsConsumed(f"{where}: these results were closed; they hand out nothing "
                               "more. Start a new map to run the items again.")
    return ResultsConsumed(f"{where}: these results have already been iterated to their end "
                           "(or ended with an error); each result is handed out once. Keep "
                           f"them to go over them again: {keep}.")


def _iterate(run: Run, deadline: float | None = None) -> Generator[Any, None, None]:
    get = run.outbox.get
    took = run.took
    wait = True
    try:
        while True:
            entry = get(deadline)
            # An item counts against the window until it has been handed to
            # the caller, so `took` comes after the items, not before.
            if type(entry) is list:
                n = len(entry)
                yield from _handing_out(entry)
                took(n)
            elif type(entry) is tuple:
                for chunk in entry:
                    n = len(chunk)
                    yield from _handing_out(chunk)
                    took(n)
            else:
                assert isinstance(entry, End)
                run.close(wait=True)
                if entry.error is not None:
                    raise entry.error
                return
    except (KeyboardInterrupt, SystemExit, FutureTimeout):
        wait = False   # Ctrl-C, a deadline: don't wait for thread calls already running
        raise
    finally:
        run.close(wait=wait)


def _handing_out(chunk: list[Any]) -> Iterator[Any]:
    """The results of ``chunk`` in order, each let go of as it is handed out.

    Iterating the list itself would keep every result handed out alive until
    the whole chunk is; popping them from its end (after one reverse) keeps
    nothing, and both the reverse and the pops are C calls.
    """
    chunk.reverse()
    return map(chunk.pop, itertools.repeat(-1, len(chunk)))


class AsyncResults(Generic[R]):
    """The results of ``conveyor.amap``: an async iterator (``async for``).

    The same semantics as :class:`Results` (iterating again, the unread
    warning, ``await results.wait()``); use ``async with`` or ``aclose()`` to
    stop the run early. Waiting for results never blocks the event loop. A
    plain ``for`` over it raises ``TypeError`` ("use `async for`") and stops
    the run.
    """

    def __init__(self, run: Run, *, where: str = "conveyor.amap") -> None:
        self._run = run
        self._usage = Usage(where)
        self._closed = False
        self._agen: AsyncGenerator[R, None] = _aiterate(run)
        weakref.finalize(self._agen, _drop, run, self._usage, *_ASYNC_FIX)

    def __aiter__(self) -> AsyncGenerator[R, None]:
        self._usage.read = True
        if _ended(self._agen):
            raise _consumed(self._usage.where, self._closed,
                            "values = [r async for r in results]")
        return self._agen

    async def __anext__(self) -> R:
        self._usage.read = True
        return await self._agen.__anext__()

    if not TYPE_CHECKING:
        # A `for` loop falls back on __getitem__ when there is no __iter__. An
        # __iter__ would make this an Iterable (isinstance checks, amap's
        # choice of how to read its input) and let mypy accept the `for`;
        # mypy already reports it, with its own "use async for" hint.
        def __getitem__(self, index: object) -> NoReturn:
            self._usage.quiet = True   # this error says it: no unread warning as well
            self._run.close(wait=False)   # never a blocking wait: a loop may run here
            where = self._usage.where
            raise TypeError(f"{where} returns an async iterator: use `async for r in "
                            f"{where}(...)` (or `await results.wait()`) in a coroutine; "
                            f"from sync code, use {where.replace('.a', '.', 1)}.")

    async def __aenter__(self) -> AsyncResults[R]:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        if et is not None and issubclass(et, (KeyboardInterrupt, SystemExit)):
            self._usage.quiet = True
            self._run.close(wait=False)
            return
        await self.aclose()

    @property
    def stats(self) -> Stats:
        """A :class:`Stats` snapshot of the run's counters, taken now: while the
        run goes, or once it has ended (its final counts)."""
        return self._run.stats()

    async def wait(self) -> Stats:
        """Run to the end, discarding the values; return the final :class:`~conveyor.Stats`.

        ``await conveyor.amap(fetch, urls).wait()``: :meth:`Results.wait` for
        async code (who raises what is the same), never blocking the loop.
        """
        self._usage.read = True
        agen = self._agen
        if not _ended(agen):
            async for _ in agen:
                pass
        if not self._run.finished:
            await _wait_stopped(self._run)
        return self._run.stats()

    def __repr__(self) -> str:
        return _repr("AsyncResults", self._run, self._usage, "await .wait()")

    async def aclose(self) -> None:
        """Cancel the run (if it is still going) and wait until it has stopped.

        May be called from another task while one iterates: that loop then
        ends after the results it already holds.
        """
        self._usage.quiet = self._closed = True
        await _wait_stopped(self._run)
        # RuntimeError: another task is inside the generator right now; it
        # sees the end of the run and finishes on its own.
        with contextlib.suppress(RuntimeError):
            await self._agen.aclose()


async def _wait_stopped(run: Run) -> None:
    """Stop the run and await the end of its dispatcher without blocking the loop."""
    run.stop()
    if not run.finished:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        def wake() -> None:
            # RuntimeError: the loop closed while this wait was cancelled (the
            # end of asyncio.run): nobody is left to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle)

        if run.on_exit(wake):
            await done
    run.close(wait=True)  # the thread has ended or is about to: a short join


async def _aiterate(run: Run) -> AsyncGenerator[Any, None]:
    aget = run.outbox.aget
    took = run.took
    try:
        while True:
            entry = await aget()
            if type(entry) is list:
                n = len(entry)
                for value in _handing_out(entry):
                    yield value
                took(n)
            elif type(entry) is tuple:
                for chunk in entry:
                    n = len(chunk)
                    for value in _handing_out(chunk):
                        yield value
                    took(n)
            else:
                assert isinstance(entry, End)
                await _wait_stopped(run)
                if entry.error is not None:
                    raise entry.error
                return
    finally:
        await _wait_stopped(run)
