"""An async iterable as the input of a run (``conveyor.amap(fn, async_gen)``).

The dispatcher thread pulls input synchronously, so items of an async
iterable are fetched one at a time on the caller's event loop with
``run_coroutine_threadsafe``. While it waits for the next item the dispatcher
does not hand out results, so a source that pauses for long also pauses the
results already finished (they are delivered with the next item).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any, TypeVar

__all__ = ["iterate_async"]

T = TypeVar("T")


async def _next(ait: AsyncIterator[T]) -> T:
    return await ait.__anext__()


def iterate_async(items: AsyncIterable[T], loop: asyncio.AbstractEventLoop) -> Iterator[T]:
    ait = items.__aiter__()
    while True:
        fut = asyncio.run_coroutine_threadsafe(_next(ait), loop)
        try:
            value: Any = fut.result()
        except StopAsyncIteration:
            return
        except BaseException:
            fut.cancel()
            raise
        yield value
