"""The asyncio peers of Tables 1 and 2, over any coroutine function.

Each maps ``fn`` over ``xs`` with at most ``limit`` calls at once, the way its
library (or the tutorials, for the stdlib ones) teaches it, and returns the
results in input order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

AFn = Callable[[Any], Awaitable[Any]]


async def gather_semaphore(fn: AFn, xs: Sequence[Any], limit: int) -> list[Any]:
    """A task per item, an ``asyncio.Semaphore`` to bound them, ``gather``."""
    sem = asyncio.Semaphore(limit)

    async def one(x: Any) -> Any:
        async with sem:
            return await fn(x)
    return await asyncio.gather(*[asyncio.create_task(one(x)) for x in xs])


async def worker_coroutines(fn: AFn, xs: Sequence[Any], limit: int) -> list[Any]:
    """``limit`` long-lived coroutines pull (index, item) from one iterator."""
    out: list[Any] = [None] * len(xs)
    items = iter(enumerate(xs))

    async def worker() -> None:
        for i, x in items:
            out[i] = await fn(x)
    await asyncio.gather(*[worker() for _ in range(limit)])
    return out


async def aiometer_amap(fn: AFn, xs: Sequence[Any], limit: int) -> list[Any]:
    import aiometer

    out = []
    async with aiometer.amap(fn, xs, max_at_once=limit) as results:
        async for r in results:
            out.append(r)
    return out


async def anyio_limiter(fn: AFn, xs: Sequence[Any], limit: int) -> list[Any]:
    import anyio

    lim = anyio.CapacityLimiter(limit)
    out: list[Any] = [None] * len(xs)

    async def one(i: int, x: Any) -> None:
        async with lim:
            out[i] = await fn(x)
    async with anyio.create_task_group() as tg:
        for i, x in enumerate(xs):
            tg.start_soon(one, i, x)
    return out
