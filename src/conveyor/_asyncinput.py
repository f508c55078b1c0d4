"""An async iterable as the input of a run (``conveyor.amap(fn, async_gen)``).

A *pump* task on the caller's event loop reads the async iterable into a small
buffer; the dispatcher thread takes whatever is there without ever blocking,
so results keep flowing while the source is quiet. Both sides wake the other
only when it waits (the dispatcher for items, the pump for room), each setting
its "I am waiting" flag before looking once more, so a wake-up is never lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterable, Callable
from typing import Any

__all__ = ["AsyncSource"]


class AsyncSource:
    def __init__(self, items: AsyncIterable[Any], loop: asyncio.AbstractEventLoop,
                 capacity: int = 256) -> None:
        self._items = items
        self._loop = loop
        self._capacity = capacity
        self._buf: collections.deque[Any] = collections.deque()
        self.finished = False                    # the iterable is exhausted or failed
        self.error: BaseException | None = None
        self._want = False                       # the dispatcher waits for items
        self._full = False                       # the pump waits for room
        self._room: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: Callable[[], None] = _nothing

    def start(self, wake: Callable[[], None]) -> None:
        """Start pumping; ``wake()`` is called (on the loop) when items arrive."""
        self._wake = wake
        self._loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        self._room = asyncio.Event()
        self._task = self._loop.create_task(self._pump())

    async def _pump(self) -> None:
        room = self._room
        assert room is not None
        try:
            async for x in self._items:
                while len(self._buf) >= self._capacity:
                    room.clear()
                    self._full = True
                    if len(self._buf) >= self._capacity:
                        await room.wait()
                    self._full = False
                self._buf.append(x)
                if self._want:
                    self._want = False
                    self._wake()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = exc
        finally:
            self.finished = True
            self._wake()

    def take(self, n: int) -> list[Any]:
        """Up to ``n`` items available now (dispatcher thread; never blocks)."""
        buf = self._buf
        items = [buf.popleft() for _ in range(min(n, len(buf)))]
        if not items and not self.finished:
            self._want = True
            items = [buf.popleft() for _ in range(min(n, len(buf)))]
        if items and self._full and self._room is not None:
            self._loop.call_soon_threadsafe(self._room.set)
        return items

    def close(self) -> None:
        """Stop pumping (from any thread)."""
        # RuntimeError: the loop is closed, and the pump with it.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        # Runs after _begin (call_soon keeps order), so the task exists.
        if self._task is not None:
            self._task.cancel()


def _nothing() -> None:
    pass
