"""The hand-off from the dispatcher thread to the consumer: lists of results.

An entry is a list of results, a tuple of such lists (what one turn of the
dispatcher produced), or the final :class:`End`.

A ``SimpleQueue`` (C-implemented, so a blocking ``get`` in the main thread is
interrupted by Ctrl-C) plus an optional asyncio waiter, so that the same
outbox serves a sync consumer (``Results``) and an async one
(``AsyncResults``) without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from queue import Empty, SimpleQueue
from typing import Any

__all__ = ["End", "Outbox"]


class End:
    """The last entry of an outbox: the run ended, with ``error`` to raise or None."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Outbox:
    __slots__ = ("_lock", "_q", "_waiter")

    def __init__(self) -> None:
        self._q: SimpleQueue[Any] = SimpleQueue()
        self._lock = threading.Lock()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def put(self, entry: list[Any] | tuple[list[Any], ...] | End) -> None:
        self._q.put(entry)
        if self._waiter is not None:
            with self._lock:
                waiter, self._waiter = self._waiter, None
            if waiter is not None:
                loop, fut = waiter
                # RuntimeError: the consumer's loop is closed, nobody to wake.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_wake, fut)

    def get(self, deadline: float | None = None) -> list[Any] | tuple[list[Any], ...] | End:
        """Block until the next entry; Ctrl-C interrupts the wait promptly.

        The wait is cut into short slices: a real SIGINT interrupts a lock wait
        on POSIX, but ``_thread.interrupt_main`` (used by some hosts) and
        Windows consoles only take effect when Python code runs again.
        ``deadline`` (``time.monotonic()``): raise ``concurrent.futures.TimeoutError``
        once it has passed.
        """
        q = self._q
        while True:
            wait = 0.1
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    try:
                        entry: list[Any] | tuple[list[Any], ...] | End = q.get(False)
                        return entry
                    except Empty:
                        raise FutureTimeout() from None
            try:
                entry = q.get(True, wait)
                return entry
            except Empty:
                continue

    async def aget(self) -> list[Any] | tuple[list[Any], ...] | End:
        """Await the next entry without blocking the event loop."""
        while True:
            try:
                entry: list[Any] | tuple[list[Any], ...] | End = self._q.get(block=False)
                return entry
            except Empty:
                pass
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._waiter = (loop, fut)
            if not self._q.empty():
                with self._lock:
                    self._waiter = None
                continue
            await fut


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
