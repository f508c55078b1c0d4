"""Task functions shared by every benchmark table.

They live in an importable module (not in ``__main__``) so that pools which
pickle the function (processes, loky, dask) send it by reference, the way a
user's module-level function usually travels. Each one is the same workload
as the reference (anchor) benchmarks use, so rows are comparable.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["ainc", "asleep_for", "cpu_burn", "inc", "sleep_for"]


def inc(x: int) -> int:
    """The trivial task: what a map costs per item is almost all framework overhead."""
    return x + 1


async def ainc(x: int) -> int:
    """Coroutine twin of :func:`inc` (never suspends)."""
    return x + 1


def sleep_for(seconds: float) -> float:
    """An I/O-like task: blocks its thread, releases the GIL."""
    time.sleep(seconds)
    return seconds


async def asleep_for(seconds: float) -> float:
    """Coroutine twin of :func:`sleep_for`."""
    await asyncio.sleep(seconds)
    return seconds


def cpu_burn(n: int) -> int:
    """Pure-Python CPU work that holds the GIL throughout."""
    total = 0
    for i in range(n):
        total += i * i
    return total
