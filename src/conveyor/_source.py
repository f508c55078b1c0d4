"""Reading the input of a run without ever blocking the dispatcher.

Built-in collections (list, tuple, range, dict, set, str, ...) are read by the
dispatcher thread itself: that cannot block and costs nothing. Any other
iterable -- a generator, a file, a paged API client, an async iterable -- may
take its time to produce the next item, and the dispatcher must keep
delivering results, enforcing timeouts and obeying ``close()`` meanwhile. So a
*pump* reads it (a thread named ``conveyor-input``, or a task on the caller's
event loop for an async iterable) into a buffer the dispatcher takes from.

The pump reads only what the dispatcher has *requested* (the room left in the
window), so the window bounds what is taken from the input, buffer included.
Each side wakes the other only when that one waits: the dispatcher for items
(``_want``), the pump for requests (``_idle``); each sets its flag before
looking once more, so a wake-up is never lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import operator
import threading
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from typing import Any

__all__ = ["CHUNK_POLL", "AsyncSource", "Source", "ThreadSource", "aclose_quietly",
           "reads_directly"]

#: Input types the dispatcher reads itself: in memory, never blocking.
_DIRECT = (list, tuple, range, dict, set, frozenset, str, bytes, bytearray)


MAX_CHUNK = 1024       # items a thread pump reads in one C-level call, at most
FAST_CHUNK = 0.001     # seconds: a chunk read faster than this doubles the next one
CHUNK_POLL = 0.005     # seconds between the dispatcher's looks while a chunk is read
READ_GRACE = 0.1       # seconds close() waits for a pump inside a read of the input


def _popleft(buf: collections.deque[Any], n: int) -> list[Any]:
    """The first ``n`` items of ``buf``, removed (a C-level loop: no bytecode per item)."""
    return list(map(collections.deque.popleft, itertools.repeat(buf, n)))


def reads_directly(items: object) -> bool:
    return type(items) in _DIRECT


class Source:
    """The buffer between a pump and the dispatcher (see the module docstring)."""

    def __init__(self) -> None:
        self._buf: collections.deque[Any] = collections.deque()
        self.finished = False                 # the input is exhausted, or failed
        self.error: BaseException | None = None
        self.requested = 0                    # written by the dispatcher
        self._pumped = 0                      # written by the pump
        self._want = False                    # the dispatcher waits for items
        self._idle = False                    # the pump waits for requests
        self._stop = False
        self._wake: Callable[[], None] = _nothing
        #: Items the pump is reading in one go (> 1: the dispatcher polls the buffer).
        self.chunk = 1

    def start(self, wake: Callable[[], None]) -> None:
        """Start the pump; ``wake()`` is called from it when items arrive or it ends."""
        self._wake = wake
        self._start()

    def request(self, n: int) -> None:
        """Allow the pump to read ``n`` more items (dispatcher thread)."""
        self.requested += n
        if self._idle:
            self._kick()

    def take(self, n: int) -> tuple[list[Any], bool]:
        """Up to ``n`` items available now, and whether the input has ended."""
        finished = self.finished    # read first: every item came before it
        buf = self._buf
        items = _popleft(buf, min(n, len(buf)))
        if not items and not finished:
            self._want = True
            finished = self.finished
            items = _popleft(buf, min(n, len(buf)))
        return items, finished and not items and not buf

    def close(self) -> None:
        """Stop the pump (it ends at its next item; from any thread)."""
        self._stop = True
        self._kick()

    # -- pump side -------------------------------------------------------------
    def _got(self, x: Any) -> None:
        self._buf.append(x)
        self._pumped += 1
        if self._want:
            self._want = False
            self._wake()

    def _end(self, error: BaseException | None) -> None:
        self.error = error
        self.finished = True
        self._wake()

    def _start(self) -> None:
        raise NotImplementedError

    def _kick(self) -> None:
        raise NotImplementedError


class ThreadSource(Source):
    """Pumps a sync iterable from a thread of its own."""

    def __init__(self, items: Iterable[Any]) -> None:
        super().__init__()
        self._it: Iterator[Any] = iter(items)
        self._more = threading.Event()
        self._reading = False   # inside a read of the input, which may block
        self._thread = threading.Thread(target=self._pump, name="conveyor-input",
                                        daemon=True)

    def _start(self) -> None:
        self._thread.start()

    def _kick(self) -> None:
        self._more.set()

    def close(self) -> None:
        """Stop the pump; if it was waiting for requests, also wait until it has
        closed the input (a generator's ``finally`` has run) and ended. A pump
        inside a read is not waited for: the input may block for as long as it
        likes, and the pump ends at its next item."""
        super().close()
        if self._reading:
            self.join(READ_GRACE)   # a quick read ends now; a blocked one is not waited for
        else:
            self.join()   # it sees the stop before it reads again

    def _pump(self) -> None:
        it = self._it
        extend = self._buf.extend
        second = operator.itemgetter(1)
        chunk = 1
        error: BaseException | None = None
        try:
            while not self._stop:
                room = self.requested - self._pumped
                if room <= 0:
                    self._idle = True
                    self._more.clear()
                    if self._pumped >= self.requested and not self._stop:
                        self._more.wait()
                    self._idle = False
                    continue
                # Read a chunk in one C-level call: each item lands in the buffer
                # as the input yields it, with no bytecode per item. Chunks grow
                # while the input is fast and drop to one item when it is slow;
                # while a chunk of several items is being read, the dispatcher
                # looks at the buffer every few ms instead of waiting for a wake-up.
                k = min(chunk, room)
                counter = itertools.count()
                self._reading = True
                if self._stopping():   # close() looks at _reading after setting _stop
                    self._reading = False
                    continue
                self.chunk = k
                t0 = time.monotonic()
                extend(map(second, zip(counter, itertools.islice(it, k), strict=False)))
                took = time.monotonic() - t0
                self.chunk = 1
                self._reading = False
                got = next(counter) - 1   # zip takes one more count than items
                self._pumped += got
                if self._want:
                    self._want = False
                    self._wake()
                if got < k:
                    break   # the input is exhausted
                chunk = min(2 * chunk, MAX_CHUNK) if took < FAST_CHUNK else 1
            else:
                # Stopped early: close a generator here, in its own thread,
                # so its `finally` blocks run now rather than at collection.
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # the input failed: raised after the results before it
            error = exc
        finally:
            self._end(error)

    def _stopping(self) -> bool:
        return self._stop   # read again: close() may have set it since the loop's test

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)


class AsyncSource(Source):
    """Pumps an async iterable from a task on the caller's event loop."""

    def __init__(self, items: AsyncIterable[Any], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._items = items
        self._loop = loop
        self._more: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def _start(self) -> None:
        self._loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        self._more = asyncio.Event()
        self._task = self._loop.create_task(self._pump())

    def _kick(self) -> None:
        # RuntimeError: the loop is closed, and the pump with it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_kick)

    def _on_kick(self) -> None:
        if self._stop and self._task is not None:
            self._task.cancel()
        elif self._more is not None:
            self._more.set()

    async def _pump(self) -> None:
        more = self._more
        assert more is not None
        error: BaseException | None = None
        ait: Any = None
        try:
            ait = self._items.__aiter__()
            while not self._stop:
                if self._pumped >= self.requested:
                    self._idle = True
                    more.clear()
                    if self._pumped >= self.requested and not self._stop:
                        await more.wait()
                    self._idle = False
                    continue
                try:
                    x = await ait.__anext__()
                except StopAsyncIteration:
                    break
                self._got(x)
            else:
                await aclose_quietly(ait)   # stopped early: run the generator's finally now
        except asyncio.CancelledError as exc:
            await aclose_quietly(ait)
            task = asyncio.current_task()
            cancelling = getattr(task, "cancelling", None)
            if self._stop or cancelling is None or cancelling():
                raise   # we (or the loop's shutdown) cancelled the pump
            error = exc   # the input itself raised CancelledError: its failure
        except BaseException as exc:  # the input failed: raised after the results before it
            error = exc
        finally:
            self._end(error)


async def aclose_quietly(ait: Any) -> None:
    """Close an async iterator (run its generator's ``finally``), ignoring its errors."""
    aclose = getattr(ait, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def _nothing() -> None:
    pass
