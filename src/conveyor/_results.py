"""What ``map`` and ``amap`` return: a stream of results over a running ``Run``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from collections.abc import AsyncGenerator, Generator, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._outbox import End
from ._progress import Stats
from ._scheduler import Run

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
    * ``stats`` is a live :class:`~conveyor.Stats` snapshot.
    """

    def __init__(self, run: Run) -> None:
        self._run = run
        # The generator holds the run, never this object: `for r in map(...)`
        # keeps only the generator alive, and dropping it (an early `break`)
        # closes the run at once.
        self._gen: Generator[R, None, None] = _iterate(run)
        self._dropped = weakref.finalize(self._gen, run.close, wait=False)

    def __iter__(self) -> Generator[R, None, None]:
        return self._gen

    def __next__(self) -> R:
        return next(self._gen)

    def __enter__(self) -> Results[R]:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is not None and issubclass(et, (KeyboardInterrupt, SystemExit)):
            self._run.close(wait=False)   # Ctrl-C: don't wait for running thread calls
            return
        self.close()

    @property
    def stats(self) -> Stats:
        """A :class:`Stats` snapshot of the run's counters, taken now: while the
        run goes, or once it has ended (its final counts)."""
        return self._run.stats()

    def until(self, deadline: float | None) -> Generator[R, None, None]:
        """The results (instead of iterating this object), raising
        ``concurrent.futures.TimeoutError`` once ``time.monotonic()`` passes
        ``deadline`` (the executors' ``map(timeout=)``)."""
        alive = self._dropped.detach() is not None
        self._gen = _iterate(self._run, deadline)
        self._dropped = weakref.finalize(self._gen, self._run.close, wait=False)
        if not alive:
            self._dropped.detach()   # keep_running() was called
        return self._gen

    def keep_running(self) -> None:
        """Dropped without being read, the run goes on to its end (the executors'
        eager ``map``); by default dropping it stops the run."""
        self._dropped.detach()

    def close(self, *, wait: bool = True, now: bool = False) -> None:
        """Cancel the run (if it is still going) and wait until it has stopped.

        May be called from another thread while a loop is iterating: that loop
        then ends after the results it already holds. ``wait=False``: stop it
        without waiting for calls already running. ``now``: also mark its
        batches cancelled from this thread, so that none starts meanwhile.
        """
        if now:
            self._run.cancel_batches()
        self._run.close(wait=wait)
        # ValueError: another thread is inside the generator right now; it
        # sees the end of the run and finishes on its own.
        with contextlib.suppress(ValueError):
            self._gen.close()

    def __repr__(self) -> str:
        s = self._run.stats()
        return (f"<conveyor.Results backend={s.backend!r} done={s.done} failed={s.failed} "
                f"in_flight={s.in_flight}>")


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

    The same semantics as :class:`Results`; use ``async with`` or ``aclose()``
    to stop the run early. Waiting for results never blocks the event loop.
    """

    def __init__(self, run: Run) -> None:
        self._run = run
        self._agen: AsyncGenerator[R, None] = _aiterate(run)
        weakref.finalize(self._agen, run.close, wait=False)

    def __aiter__(self) -> AsyncGenerator[R, None]:
        return self._agen

    async def __anext__(self) -> R:
        return await self._agen.__anext__()

    async def __aenter__(self) -> AsyncResults[R]:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        if et is not None and issubclass(et, (KeyboardInterrupt, SystemExit)):
            self._run.close(wait=False)
            return
        await self.aclose()

    @property
    def stats(self) -> Stats:
        """A :class:`Stats` snapshot of the run's counters, taken now: while the
        run goes, or once it has ended (its final counts)."""
        return self._run.stats()

    async def aclose(self) -> None:
        """Cancel the run (if it is still going) and wait until it has stopped.

        May be called from another task while one iterates: that loop then
        ends after the results it already holds.
        """
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
