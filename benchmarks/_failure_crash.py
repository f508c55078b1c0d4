"""Table 5's crash scenarios: task 3 calls ``os._exit(1)``, so its worker
process dies without an exception (as under a segfault or the OOM killer)."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from _failure_child import (
    BAD,
    TIMEOUT_S,
    Ctx,
    N,
    conveyor_map_raise,
    conveyor_map_return,
    drain,
    drain_past_errors,
    exc_name,
    new_conveyor_map,
    usable,
)
from _harness import dask_client, kill_loky_executors
from workloads import inc

# ---- crash: stdlib and peers -------------------------------------------------

def crash_ppe_map(ctx: Ctx) -> None:
    with ProcessPoolExecutor(2) as ex:
        ctx.begin()
        got, err = drain(ctx, ex.map(ctx.crash(), range(N)))
        ctx.summary(seen=exc_name(err), good=got,
                    usable=usable(lambda: ex.submit(inc, 1).result(timeout=10)))


def submit_all(ctx: Ctx, submit: Callable[[Callable[[int], int], int], Any],
               note: str = "") -> None:
    """``submit(fn, x)`` every item, wait for them all, then one more task."""
    ctx.begin()
    fs = [submit(ctx.crash(), i) for i in range(N)]
    ctx.wait(fs, 20)
    good, errors, bad = ctx.collect(fs, timeout=0)
    ctx.summary(seen=errors, good=good, bad_ok=bad, note=note,
                usable=usable(lambda: submit(inc, 1).result(timeout=10)))


def crash_ppe_submit(ctx: Ctx) -> None:
    with ProcessPoolExecutor(2) as ex:
        submit_all(ctx, ex.submit)


def crash_mp_pool_map(ctx: Ctx) -> None:
    import multiprocessing as mp

    with mp.Pool(2) as pool:
        ctx.begin()
        res = pool.map(ctx.crash(), range(N))
        ctx.summary(seen="none", good=len(res), usable="?")


def crash_mp_pool_imap(ctx: Ctx) -> None:
    import multiprocessing as mp

    with mp.Pool(2) as pool:
        ctx.begin()
        got, err = drain(ctx, pool.imap(ctx.crash(), range(N)))
        ctx.summary(seen=exc_name(err), good=got, usable="?")


def crash_mp_pool_apply_async(ctx: Ctx) -> None:
    import multiprocessing as mp

    with mp.Pool(2) as pool:
        ctx.begin()
        rs = [pool.apply_async(ctx.crash(), (i,)) for i in range(N)]
        good, errors, bad = 0, collections.Counter[str](), None
        for i, r in enumerate(rs):
            try:
                r.get(timeout=5 * ctx.timeout / TIMEOUT_S)
                good += 1
            except Exception as e:
                ctx.error_seen()
                errors[exc_name(e)] += 1
                bad = True if i == BAD else bad
        ctx.summary(seen=dict(errors) or "none", good=good, bad_ok=bad,
                    note="the lost task is only detectable by get(timeout=5)",
                    usable=usable(lambda: pool.apply_async(inc, (1,)).get(timeout=10)))


def crash_joblib_loky_list(ctx: Ctx) -> None:
    from joblib import Parallel, delayed

    ctx.begin()
    err, got = None, 0
    try:
        got = len(Parallel(n_jobs=2)(delayed(ctx.crash())(i) for i in range(N)))
    except Exception as e:
        ctx.error_seen()
        err = e
    ctx.summary(seen=exc_name(err), good=got,
                usable=usable(lambda: Parallel(n_jobs=2)(delayed(inc)(i) for i in range(4))),
                note="the next Parallel call starts fresh workers")
    kill_loky_executors()


def crash_joblib_loky_generator(ctx: Ctx) -> None:
    from joblib import Parallel, delayed

    ctx.begin()
    got, err = drain(ctx, Parallel(n_jobs=2, return_as="generator")(
        delayed(ctx.crash())(i) for i in range(N)))
    ctx.summary(seen=exc_name(err), good=got,
                usable=usable(lambda: Parallel(n_jobs=2)(delayed(inc)(i) for i in range(4))))
    kill_loky_executors()


def crash_loky_executor(ctx: Ctx) -> None:
    import loky

    ex = loky.get_reusable_executor(max_workers=2)
    submit_all(ctx, ex.submit, note="get_reusable_executor() again gives a fresh executor")
    kill_loky_executors()


def crash_mpire_map(ctx: Ctx) -> None:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2) as pool:
        ctx.begin()
        err, got = None, 0
        try:
            got = len(pool.map(ctx.crash(), range(N), chunk_size=1))
        except Exception as e:
            ctx.error_seen()
            err = e
        ctx.summary(seen=exc_name(err), good=got,
                    usable=usable(lambda: pool.map(inc, range(4))))


def crash_mpire_imap(ctx: Ctx) -> None:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2) as pool:
        ctx.begin()
        got, err = drain(ctx, pool.imap(ctx.crash(), range(N), chunk_size=1))
        ctx.summary(seen=exc_name(err), good=got,
                    usable=usable(lambda: pool.map(inc, range(4))))


def crash_pebble_schedule(ctx: Ctx) -> None:
    from pebble import ProcessPool

    with ProcessPool(max_workers=2) as pool:
        submit_all(ctx, lambda fn, x: pool.schedule(fn, args=(x,)))


def crash_pebble_map(ctx: Ctx) -> None:
    from pebble import ProcessPool

    with ProcessPool(max_workers=2) as pool:
        ctx.begin()
        good, errors = drain_past_errors(ctx, iter(pool.map(ctx.crash(), range(N)).result()))
        ctx.summary(seen=errors or "none", good=good,
                    note="iteration goes on past the failed item",
                    usable=usable(lambda: pool.schedule(inc, args=(1,)).result(timeout=10)))


def crash_dask(ctx: Ctx) -> None:
    from distributed import wait as dwait

    with dask_client(2) as client:
        ctx.begin()
        fs = ctx.watch(client.map(ctx.crash(), range(N), pure=False))
        with contextlib.suppress(Exception):
            dwait(fs, timeout=60)
        good, errors, bad = ctx.collect(fs, timeout=0.1)
        ctx.summary(seen=errors, good=good, bad_ok=bad,
                    note="the dead worker is restarted by its nanny and the task retried "
                         "(allowed-failures=3)",
                    usable=usable(lambda: client.submit(inc, 1, pure=False).result(timeout=20)))


# ---- crash: conveyor -----------------------------------------------------------
def crash_conveyor_map_return(ctx: Ctx) -> None:
    good, errors, bad = conveyor_map_return(ctx, ctx.crash())
    ctx.summary(seen=errors or "none", good=good, bad_ok=bad, usable=new_conveyor_map())


def crash_conveyor_map_raise(ctx: Ctx) -> None:
    got, seen, bad = conveyor_map_raise(ctx, ctx.crash())
    ctx.summary(seen=f"{seen} raised", good=got, bad_ok=bad, usable=new_conveyor_map(),
                note="on_error='raise': the results before the failed item, then its error")


def crash_conveyor_pool_map_return(ctx: Ctx) -> None:
    import conveyor

    with conveyor.Pool(backend="process", workers=2) as pool:
        good, errors, bad = conveyor_map_return(ctx, ctx.crash(), pool=pool)
        ctx.summary(seen=errors or "none", good=good, bad_ok=bad,
                    usable=usable(lambda: pool.submit(inc, 1).result(timeout=10)))


def crash_conveyor_pool_submit(ctx: Ctx) -> None:
    import conveyor

    with conveyor.Pool(backend="process", workers=2) as pool:
        submit_all(ctx, pool.submit)
