"""Table 5's hang scenarios: task 3 sleeps "forever" (1e6 s), and the caller
asks for a 2 s per-task timeout in whatever way the library offers one."""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from _failure_child import (
    BAD,
    Ctx,
    N,
    conveyor_map_raise,
    conveyor_map_return,
    drain_past_errors,
    emit,
    exc_name,
    new_conveyor_map,
    usable,
)
from _harness import dask_client
from workloads import ahang_at, inc

# ---- hang: stdlib and peers ----------------------------------------------------

def _hang_executor_result_timeout(ctx: Ctx, ex: Executor, note: str) -> None:
    """submit everything, result(timeout=2) each, then shut down without waiting."""
    ctx.begin()
    fs = ctx.watch([ex.submit(ctx.hang(), i) for i in range(N)])
    good, errors, bad = ctx.collect(fs, timeout=ctx.timeout)
    ex.shutdown(wait=False, cancel_futures=True)
    ctx.summary(seen=errors, good=good, bad_ok=bad, usable="no (shut down)", note=note)
    emit(event="leaving")


def hang_ppe_result_timeout(ctx: Ctx) -> None:
    _hang_executor_result_timeout(
        ctx, ProcessPoolExecutor(2),
        "no per-task timeout: result(timeout=2); the stuck worker is not killed")


def hang_tpe_result_timeout(ctx: Ctx) -> None:
    _hang_executor_result_timeout(ctx, ThreadPoolExecutor(2),
                                  "result(timeout=2); a thread cannot be killed")


def hang_mp_pool_apply_async(ctx: Ctx) -> None:
    import multiprocessing as mp

    pool = mp.Pool(2)
    ctx.begin()
    rs = [pool.apply_async(ctx.hang(), (i,)) for i in range(N)]
    good, errors, bad = 0, collections.Counter[str](), None
    for i, r in enumerate(rs):
        try:
            r.get(timeout=ctx.timeout)
            good += 1
        except Exception as e:
            ctx.error_seen()
            errors[exc_name(e)] += 1
            bad = True if i == BAD else bad
    ctx.summary(seen=dict(errors), good=good, bad_ok=bad,
                usable="yes, 1 of 2 workers stuck until terminate()",
                note="no per-task timeout: get(timeout=2), then pool.terminate()")
    pool.terminate()
    pool.join()
    emit(event="leaving")


def hang_joblib_loky_timeout(ctx: Ctx) -> None:
    from joblib import Parallel, delayed

    ctx.begin()
    err, got = None, 0
    try:
        got = len(Parallel(n_jobs=2, timeout=ctx.timeout)(
            delayed(ctx.hang())(i) for i in range(N)))
    except Exception as e:
        ctx.error_seen()
        err = e
    ctx.summary(seen=exc_name(err), good=got, note="Parallel(timeout=2)",
                usable=usable(lambda: Parallel(n_jobs=2)(delayed(inc)(i) for i in range(4))))
    emit(event="leaving")


def hang_joblib_threading_timeout(ctx: Ctx) -> None:
    from joblib import Parallel, delayed

    ctx.begin()
    err, got = None, 0
    try:
        got = len(Parallel(n_jobs=2, backend="threading", timeout=ctx.timeout)(
            delayed(ctx.hang())(i) for i in range(N)))
    except Exception as e:
        ctx.error_seen()
        err = e
    ctx.summary(seen=exc_name(err), good=got, note="Parallel(timeout=2)",
                usable=usable(lambda: Parallel(n_jobs=2, backend="threading")(
                    delayed(inc)(i) for i in range(4))))
    emit(event="leaving")


def hang_mpire_task_timeout(ctx: Ctx) -> None:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2) as pool:
        ctx.begin()
        err, got = None, 0
        try:
            got = len(pool.map(ctx.hang(), range(N), chunk_size=1, task_timeout=ctx.timeout))
        except Exception as e:
            ctx.error_seen()
            err = e
        ctx.summary(seen=exc_name(err), good=got, note="map(task_timeout=2)",
                    usable=usable(lambda: pool.map(inc, range(4))))
    emit(event="leaving")


def hang_pebble_schedule_timeout(ctx: Ctx) -> None:
    from pebble import ProcessPool

    with ProcessPool(max_workers=2) as pool:
        ctx.begin()
        fs = [pool.schedule(ctx.hang(), args=(i,), timeout=ctx.timeout) for i in range(N)]
        ctx.wait(fs, 30)
        good, errors, bad = ctx.collect(fs, timeout=0)
        ctx.summary(seen=errors, good=good, bad_ok=bad,
                    usable=usable(lambda: pool.schedule(inc, args=(1,)).result(timeout=10)),
                    note="schedule(timeout=2): the stuck worker is killed and replaced")
    emit(event="leaving")


def hang_pebble_map_timeout(ctx: Ctx) -> None:
    from pebble import ProcessPool

    with ProcessPool(max_workers=2) as pool:
        ctx.begin()
        good, errors = drain_past_errors(
            ctx, iter(pool.map(ctx.hang(), range(N), timeout=ctx.timeout).result()))
        ctx.summary(seen=errors, good=good,
                    usable=usable(lambda: pool.schedule(inc, args=(1,)).result(timeout=10)),
                    note="map(timeout=2) is per chunk (chunksize=1 here)")
    emit(event="leaving")


def hang_asyncio_wait_for(ctx: Ctx) -> None:
    async def main() -> None:
        ctx.begin()
        res = await asyncio.gather(
            *[asyncio.wait_for(ahang_at(i, BAD, ctx.task_s), ctx.timeout) for i in range(N)],
            return_exceptions=True)
        errors = collections.Counter(exc_name(r) for r in res if isinstance(r, BaseException))
        if errors:
            ctx.error_seen()
        ctx.summary(seen=dict(errors), good=N - sum(errors.values()),
                    bad_ok=isinstance(res[BAD], BaseException),
                    usable="yes (the coroutine is cancelled)", note="asyncio.wait_for(coro, 2)")
    asyncio.run(main())
    emit(event="leaving")


def hang_asyncio_to_thread(ctx: Ctx) -> None:
    async def main() -> None:
        ctx.begin()
        res = await asyncio.gather(
            *[asyncio.wait_for(asyncio.to_thread(ctx.hang(), i), ctx.timeout)
              for i in range(N)], return_exceptions=True)
        errors = collections.Counter(exc_name(r) for r in res if isinstance(r, BaseException))
        if errors:
            ctx.error_seen()
        ctx.summary(seen=dict(errors), good=N - sum(errors.values()),
                    bad_ok=isinstance(res[BAD], BaseException), usable="n/a",
                    note="wait_for(to_thread(sync f), 2): the thread keeps running")
    asyncio.run(main())
    emit(event="leaving")


def hang_loky_kill_workers(ctx: Ctx) -> None:
    import loky

    ex = loky.get_reusable_executor(max_workers=2)
    ctx.begin()
    fs = ctx.watch([ex.submit(ctx.hang(), i) for i in range(N)])
    good, errors, bad = ctx.collect(fs, timeout=ctx.timeout)
    ex.shutdown(wait=True, kill_workers=True)
    ctx.summary(seen=errors, good=good, bad_ok=bad,
                usable="no (shut down; the next get_reusable_executor() is new)",
                note="result(timeout=2), then shutdown(kill_workers=True)")
    emit(event="leaving")


def hang_dask_result_timeout(ctx: Ctx) -> None:
    with dask_client(2) as client:
        ctx.begin()
        fs = ctx.watch(client.map(ctx.hang(), range(N), pure=False))
        good, errors, bad = ctx.collect(fs, timeout=ctx.timeout)
        client.cancel(fs)
        ctx.summary(seen=errors, good=good, bad_ok=bad,
                    usable=usable(lambda: client.submit(inc, 1, pure=False).result(timeout=20)),
                    note="result(timeout=2) + client.cancel(): a running task is not stopped")
    emit(event="leaving")


# ---- hang: conveyor ------------------------------------------------------------

def hang_conveyor_map_return(ctx: Ctx) -> None:
    good, errors, bad = conveyor_map_return(ctx, ctx.hang(), timeout=ctx.timeout)
    ctx.summary(seen=errors or "none", good=good, bad_ok=bad, usable=new_conveyor_map(),
                note="timeout=2: the stuck worker is killed and replaced")
    emit(event="leaving")


def hang_conveyor_map_raise(ctx: Ctx) -> None:
    got, seen, bad = conveyor_map_raise(ctx, ctx.hang(), timeout=ctx.timeout)
    ctx.summary(seen=f"{seen} raised", good=got, bad_ok=bad, usable=new_conveyor_map(),
                note="timeout=2, on_error='raise': the results before the failed item, "
                     "then its error")
    emit(event="leaving")


def hang_conveyor_pool_map_return(ctx: Ctx) -> None:
    import conveyor

    with conveyor.Pool(backend="process", workers=2) as pool:
        good, errors, bad = conveyor_map_return(ctx, ctx.hang(), pool=pool,
                                                timeout=ctx.timeout)
        ctx.summary(seen=errors or "none", good=good, bad_ok=bad,
                    usable=usable(lambda: pool.submit(inc, 1).result(timeout=10)),
                    note="timeout=2: the stuck worker is killed and replaced")
    emit(event="leaving")


def hang_conveyor_pool_schedule(ctx: Ctx) -> None:
    import conveyor

    with conveyor.Pool(backend="process", workers=2) as pool:
        ctx.begin()
        fs: list[Future[int]] = ctx.watch([pool.schedule(ctx.hang(), (i,), timeout=ctx.timeout)
                                           for i in range(N)])
        good, errors, bad = ctx.collect(fs, timeout=ctx.timeout + 20)
        ctx.summary(seen=errors, good=good, bad_ok=bad,
                    usable=usable(lambda: pool.submit(inc, 1).result(timeout=10)),
                    note="schedule(timeout=2): the stuck worker is killed and replaced")
    emit(event="leaving")
