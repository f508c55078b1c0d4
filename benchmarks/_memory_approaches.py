"""Table 4's approaches: each a context manager that sets a pool up and warms it,
yielding ``run(generator) -> sum``.

``memory_lazy_input.py`` holds the rows (``CASES``) that name these; each row
runs in a fresh child process of its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing as mp
import multiprocessing.dummy as mpd
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from _conveyor_rows import WARMUP, one_shot_map, pool_map
from _harness import quiet_dask_logs
from workloads import ainc, inc

Gen = Iterator[int]
RunSum = Callable[[Gen], int]
Factory = Callable[[], AbstractContextManager[RunSum]]


def windowed(ex: Executor, fn: Callable[[int], int], items: Iterable[int],
             window: int) -> Iterator[int]:
    """Ordered map with at most ``window`` futures in flight (the hand-written fix)."""
    pending: collections.deque[Future[int]] = collections.deque()
    for x in items:
        pending.append(ex.submit(fn, x))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextlib.contextmanager
def sequential() -> Iterator[RunSum]:
    yield lambda gen: sum(map(inc, gen))


@contextlib.contextmanager
def tpe_map() -> Iterator[RunSum]:
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(inc, WARMUP))
        yield lambda gen: sum(ex.map(inc, gen))


@contextlib.contextmanager
def tpe_window() -> Iterator[RunSum]:
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(inc, WARMUP))
        yield lambda gen: sum(windowed(ex, inc, gen, window=64))


@contextlib.contextmanager
def mpdummy_imap() -> Iterator[RunSum]:
    with mpd.Pool(4) as pool:
        pool.map(inc, WARMUP)
        yield lambda gen: sum(pool.imap(inc, gen, chunksize=256))


def joblib_generator(backend: str, n_jobs: int) -> Factory:
    @contextlib.contextmanager
    def cm() -> Iterator[RunSum]:
        from joblib import Parallel, delayed

        with Parallel(n_jobs=n_jobs, backend=backend, return_as="generator") as par:
            sum(par(delayed(inc)(x) for x in WARMUP))
            yield lambda gen: sum(par(delayed(inc)(x) for x in gen))
    return cm


@contextlib.contextmanager
def ppe_map() -> Iterator[RunSum]:
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(inc, WARMUP))
        yield lambda gen: sum(ex.map(inc, gen, chunksize=1000))


@contextlib.contextmanager
def mp_imap() -> Iterator[RunSum]:
    with mp.Pool(2) as pool:
        pool.map(inc, WARMUP)
        yield lambda gen: sum(pool.imap(inc, gen, chunksize=1000))


@contextlib.contextmanager
def mpire_imap() -> Iterator[RunSum]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2, keep_alive=True) as pool:
        pool.map(inc, WARMUP)
        yield lambda gen: sum(pool.imap(inc, gen, chunk_size=1000))


@contextlib.contextmanager
def pebble_map() -> Iterator[RunSum]:
    from pebble import ProcessPool

    with ProcessPool(max_workers=2) as pool:
        list(pool.map(inc, WARMUP).result())
        yield lambda gen: sum(pool.map(inc, gen, chunksize=1000).result())


@contextlib.contextmanager
def dask_map() -> Iterator[RunSum]:
    from distributed import Client, LocalCluster

    with quiet_dask_logs(), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.gather(client.map(inc, list(WARMUP), pure=False))
        # client.map refuses iterators ("Dask no longer supports mapping over
        # Iterators"): the generator must be materialised, part of this row's cost.
        yield lambda gen: sum(client.gather(client.map(inc, list(gen), pure=False)))


def on_loop(coro_fn: Callable[[Iterator[int]], Coroutine[Any, Any, int]]) -> Factory:
    @contextlib.contextmanager
    def cm() -> Iterator[RunSum]:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(coro_fn(iter(WARMUP)))
            yield lambda gen: loop.run_until_complete(coro_fn(gen))
        finally:
            loop.close()
    return cm


async def gather_all(gen: Iterator[int]) -> int:
    return sum(await asyncio.gather(*[asyncio.create_task(ainc(x)) for x in gen]))


async def worker_coroutines(gen: Iterator[int], limit: int = 100) -> int:
    total = 0

    async def worker() -> None:
        nonlocal total
        for x in gen:
            total += await ainc(x)
    await asyncio.gather(*[worker() for _ in range(limit)])
    return total


async def aiometer_amap(gen: Iterator[int], limit: int = 100) -> int:
    import aiometer

    total = 0
    # aiometer.amap takes a Sequence only (it calls len()): the generator must be
    # materialised first, which is part of what this row costs.
    async with aiometer.amap(ainc, list(gen), max_at_once=limit) as results:
        async for r in results:
            total += r
    return total


# ---- conveyor -------------------------------------------------------------------

def conveyor_pool(backend: str, fn: Callable[[int], Any], workers: int,
                  **options: Any) -> Factory:
    return pool_map(backend, fn, workers, sum, **options)


def conveyor_map(fn: Callable[[int], Any], workers: int, **options: Any) -> Factory:
    return one_shot_map(fn, workers, sum, **options)


async def conveyor_amap_sum(gen: Iterator[int]) -> int:
    import conveyor

    total = 0
    async for r in conveyor.amap(ainc, gen, workers=100):
        total += r
    return total
