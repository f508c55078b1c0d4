"""Table 1's systems: each factory returns a context manager that sets a system
up, warms it with a 16-item map, and yields ``run(xs) -> list of results``.

``overhead.py`` holds the rows (``CASES``) that name these, and measures them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import multiprocessing.dummy as mpd
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager
from typing import Any

import conveyor
from _conveyor_rows import WARMUP, one_shot_map, pool_map
from _harness import dask_client, kill_loky_executors
from workloads import ainc, inc

Run = Callable[[range], Sequence[Any]]
Factory = Callable[[], AbstractContextManager[Run]]


def auto_chunk(n: int, workers: int) -> int:
    """multiprocessing.Pool.map's own rule: about 4 chunks per worker."""
    return max(1, math.ceil(n / (4 * workers)))


@contextlib.contextmanager
def sequential() -> Iterator[Run]:
    yield lambda xs: list(map(inc, xs))


def tpe_map(workers: int) -> Factory:
    @contextlib.contextmanager
    def cm() -> Iterator[Run]:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(inc, WARMUP))
            yield lambda xs: list(ex.map(inc, xs))
    return cm


def executor_as_completed(executor: type[Executor], workers: int) -> Factory:
    """``submit`` every item, then collect them with ``as_completed`` (thread or process pool)."""
    @contextlib.contextmanager
    def cm() -> Iterator[Run]:
        with executor(workers) as ex:
            list(ex.map(inc, WARMUP))
            yield lambda xs: [f.result() for f in as_completed([ex.submit(inc, x) for x in xs])]
    return cm


def mp_style(pool: Callable[[int], Any], workers: int, chunksize: int | None) -> Factory:
    """A ``multiprocessing.Pool`` or its thread twin ``multiprocessing.dummy.Pool``:
    ``map`` (its own chunking: N / (4 * workers)) or, with ``chunksize``, ``imap``."""
    @contextlib.contextmanager
    def cm() -> Iterator[Run]:
        with pool(workers) as p:
            p.map(inc, WARMUP)
            if chunksize is None:
                yield lambda xs: p.map(inc, xs)
            else:
                yield lambda xs: list(p.imap(inc, xs, chunksize))
    return cm


def mp_dummy(workers: int, method: str) -> Factory:
    """``method``: "map", or "imap" (chunksize=1)."""
    return mp_style(mpd.Pool, workers, None if method == "map" else 1)


def joblib_parallel(backend: str, n_jobs: int, return_as: str = "list") -> Factory:
    @contextlib.contextmanager
    def cm() -> Iterator[Run]:
        from joblib import Parallel, delayed

        if backend == "loky":
            kill_loky_executors()  # a real cold start, not joblib's cached workers
        with Parallel(n_jobs=n_jobs, backend=backend, return_as=return_as) as par:
            list(par(delayed(inc)(x) for x in WARMUP))
            yield lambda xs: list(par(delayed(inc)(x) for x in xs))
        if backend == "loky":
            kill_loky_executors()
    return cm


# ---- asyncio (the caller's own loop) ---------------------------------------

async def gather_tasks(xs: range) -> list[int]:
    return await asyncio.gather(*[asyncio.create_task(ainc(x)) for x in xs])


def with_ainc(peer: Callable[[Any, Sequence[Any], int], Coroutine[Any, Any, list[Any]]],
              limit: int = 100) -> Callable[[range], Coroutine[Any, Any, list[Any]]]:
    """An async peer of ``async_peers`` mapping ``ainc`` with ``limit`` at once."""
    return lambda xs: peer(ainc, xs, limit)


def on_loop(coro_fn: Callable[[range], Coroutine[Any, Any, Sequence[Any]]]) -> Factory:
    """Run ``coro_fn(xs)`` to completion on one event loop kept for all repeats."""
    @contextlib.contextmanager
    def cm() -> Iterator[Run]:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(coro_fn(WARMUP))
            yield lambda xs: loop.run_until_complete(coro_fn(xs))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    return cm


# ---- processes and cluster ---------------------------------------------------

def chunks(n: int, workers: int, chunksize: int | None) -> int:
    """A fixed chunk size, or (None) about 4 chunks per worker like Pool.map's rule."""
    return auto_chunk(n, workers) if chunksize is None else chunksize


def ppe_map(workers: int, chunksize: int | None) -> Factory:
    """``chunksize=None``: N / (4 * workers), what multiprocessing.Pool.map picks."""
    @contextlib.contextmanager
    def cm() -> Iterator[Run]:
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(inc, WARMUP))
            yield lambda xs: list(ex.map(inc, xs,
                                         chunksize=chunks(len(xs), workers, chunksize)))
    return cm


def mp_pool_map(workers: int) -> Factory:
    return mp_style(mp.Pool, workers, None)


def mp_pool_imap(workers: int, chunksize: int) -> Factory:
    return mp_style(mp.Pool, workers, chunksize)


def pebble_map(workers: int, chunksize: int | None) -> Factory:
    @contextlib.contextmanager
    def cm() -> Iterator[Run]:
        from pebble import ProcessPool

        with ProcessPool(max_workers=workers) as pool:
            list(pool.map(inc, WARMUP).result())
            yield lambda xs: list(pool.map(
                inc, xs, chunksize=chunks(len(xs), workers, chunksize)).result())
    return cm


def mpire_map(workers: int, chunk_size: int | None = None) -> Factory:
    @contextlib.contextmanager
    def cm() -> Iterator[Run]:
        from mpire import WorkerPool

        with WorkerPool(n_jobs=workers, start_method="fork", keep_alive=True) as pool:
            pool.map(inc, WARMUP)
            yield lambda xs: pool.map(inc, xs, chunk_size=chunk_size)
    return cm


def loky_map(workers: int, chunksize: int) -> Factory:
    @contextlib.contextmanager
    def cm() -> Iterator[Run]:
        import loky

        kill_loky_executors()  # a real cold start, not a cached executor
        ex = loky.get_reusable_executor(max_workers=workers)
        try:
            list(ex.map(inc, WARMUP))
            yield lambda xs: list(ex.map(inc, xs, chunksize=chunksize))
        finally:
            kill_loky_executors()
    return cm


def dask_client_map(workers: int) -> Factory:
    @contextlib.contextmanager
    def cm() -> Iterator[Run]:
        with dask_client(workers) as client:
            client.gather(client.map(inc, WARMUP, pure=False))
            # pure=False: fresh keys per call, so a repeat cannot hit cached results
            yield lambda xs: client.gather(client.map(inc, xs, pure=False))
    return cm


def conveyor_dask_pool(workers: int) -> Factory:
    """Warm: a LocalCluster and a ``conveyor.Pool(backend="dask", cluster=client)`` on it."""
    @contextlib.contextmanager
    def cm() -> Iterator[Run]:
        with dask_client(workers) as client, \
                conveyor.Pool(backend="dask", cluster=client) as pool:
            list(pool.map(inc, WARMUP))
            yield lambda xs: list(pool.map(inc, xs))
    return cm


# ---- conveyor ----------------------------------------------------------------

def conveyor_pool(backend: str, fn: Callable[[int], Any], workers: int,
                  **options: Any) -> Factory:
    return pool_map(backend, fn, workers, list, **options)


def conveyor_map(fn: Callable[[int], Any], workers: int, **options: Any) -> Factory:
    return one_shot_map(fn, workers, list, **options)


def conveyor_amap(fn: Callable[[int], Any], workers: int, **options: Any) -> Factory:
    """``async for`` over ``conveyor.amap`` on the caller's loop (one-shot per call)."""
    async def collect(xs: range) -> list[Any]:
        return [r async for r in conveyor.amap(fn, xs, workers=workers, **options)]
    return on_loop(collect)


# Order matters a little: fork-based pools run after every thread-based row has
