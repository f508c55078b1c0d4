"""Task functions shared by every benchmark table.

They live in an importable module (not in ``__main__``) so that pools which
pickle the function (processes, loky, dask) send it by reference, the way a
user's module-level function usually travels. Each one is the same workload
as the reference (anchor) benchmarks use, so rows are comparable.

The module imports nothing slow at its top: a pool whose workers are fresh
interpreters (conveyor's process backend, loky, joblib, dask) imports it in
every worker to unpickle the function, so importing ``asyncio`` here (~30 ms
without .pyc files) would be charged to those pools' start-up and not to
fork-based ones. The coroutines import it when they run.
"""

from __future__ import annotations

import os
import time

__all__ = ["ahang_at", "ainc", "apass_after", "asleep_for", "cpu_burn", "crash_at",
           "hang_at", "inc", "pass_after", "sleep_for"]


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
    import asyncio

    await asyncio.sleep(seconds)
    return seconds


def pass_after(x: object, seconds: float) -> object:
    """A pipeline's I/O stage: blocks ``seconds`` (like a request), hands ``x`` on."""
    time.sleep(seconds)
    return x


async def apass_after(x: object, seconds: float) -> object:
    """Coroutine twin of :func:`pass_after`."""
    import asyncio

    await asyncio.sleep(seconds)
    return x


def cpu_burn(n: int) -> int:
    """Pure-Python CPU work that holds the GIL throughout."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def crash_at(i: int, bad: int = 3, seconds: float = 0.2) -> int:
    """Task ``bad`` kills its worker process: no exception, no clean-up (like a segfault
    or the OOM killer); every other task sleeps ``seconds`` and returns its index."""
    if i == bad:
        time.sleep(0.05)
        os._exit(1)
    time.sleep(seconds)
    return i


def hang_at(i: int, bad: int = 3, seconds: float = 0.2) -> int:
    """Task ``bad`` sleeps (practically) forever; every other one sleeps ``seconds``."""
    if i == bad:
        time.sleep(1e6)
    time.sleep(seconds)
    return i


async def ahang_at(i: int, bad: int = 3, seconds: float = 0.2) -> int:
    """Coroutine twin of :func:`hang_at`."""
    import asyncio

    if i == bad:
        await asyncio.sleep(1e6)
    await asyncio.sleep(seconds)
    return i
