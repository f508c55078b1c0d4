"""Table 7b - per-item cost of a trivial function from 10^4 to 10^7 items (see scale.py).

A warm pool of each backend maps ``inc`` (``ainc``) over ``range(N)``, summing
the results as they arrive, each run in a fresh forked process
(``_isolate.py``). A size is predicted from the largest size measured before
it: one predicted past the budget is not run (its cell says so), one
predicted past ``ONE_RUN_S`` runs once.
"""

from __future__ import annotations

import asyncio
import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import conveyor
from _harness import fmt_ratio, fmt_s, fmt_us, md_table, missing_modules, progress
from _isolate import failure_cell, growth_mib, run_isolated
from workloads import ainc, inc

BUDGET_S = 180.0      # a size predicted to take longer than this is not run
ONE_RUN_S = 20.0      # a size predicted to take longer than this runs once
WARMUP = range(16)

Answer = dict[str, Any]


def _sum_answer(t0: float, total: int, n: int) -> Answer:
    return {"wall": time.perf_counter() - t0, "ok": total == n * (n + 1) // 2}


def pool_sum(backend: str, fn: Callable[[int], Any], workers: int) -> Callable[[int], Answer]:
    """A Pool, a warm-up map, then the timed map of ``range(n)``."""
    def run(n: int) -> Answer:
        with conveyor.Pool(backend=backend, workers=workers) as pool:  # type: ignore[arg-type]
            sum(pool.map(fn, WARMUP))
            t0 = time.perf_counter()
            return _sum_answer(t0, sum(pool.map(fn, range(n))), n)
    return run


async def amap_total(xs: range, workers: int) -> int:
    total = 0
    async with conveyor.amap(ainc, xs, workers=workers) as results:
        async for r in results:
            total += r
    return total


def amap_sum(workers: int) -> Callable[[int], Answer]:
    """One-shot amap calls on one loop: a warm-up call, then the timed one."""
    async def main(n: int) -> Answer:
        await amap_total(WARMUP, workers)
        t0 = time.perf_counter()
        return _sum_answer(t0, await amap_total(range(n), workers), n)
    return lambda n: asyncio.run(main(n))


def import_distributed() -> None:
    import distributed  # the client side of conveyor's dask backend runs in the mapper

    del distributed


@dataclass(frozen=True)
class CostCase:
    backend: str
    label: str
    run: Callable[[int], Answer]
    requires: tuple[str, ...] = ()
    prepare: Callable[[], object] | None = None   # before the RSS baseline
    expensive: bool = False   # skipped by --quick (starts a cluster per size)


COST_CASES = (
    CostCase("thread", "conveyor.Pool(workers=4).map(inc, range(N)) [warm]",
             pool_sum("thread", inc, 4)),
    CostCase("asyncio", "conveyor.Pool(backend='asyncio', workers=100).map(ainc, range(N)) "
             "[warm]", pool_sum("asyncio", ainc, 100)),
    CostCase("asyncio", "conveyor.amap(ainc, range(N), workers=100) in asyncio.run",
             amap_sum(100)),
    CostCase("process", "conveyor.Pool(backend='process', workers=2).map(inc, range(N)) [warm]",
             pool_sum("process", inc, 2)),
    CostCase("dask", "conveyor.Pool(backend='dask', workers=2).map(inc, range(N)) [warm; "
             "the LocalCluster it starts]", pool_sum("dask", inc, 2), requires=("distributed",),
             prepare=import_distributed, expensive=True),
)


def power(n: int) -> str:
    e = round(math.log10(n))
    return f"10^{e}" if 10**e == n else f"{n:,}"


def measure_size(case: CostCase, n: int, runs: int, timeout: float
                 ) -> tuple[float, float] | str:
    """(µs/item, MiB of RSS growth) of ``runs`` fresh runs at size ``n``, or what failed."""
    answers = [run_isolated(functools.partial(case.run, n), timeout=timeout,
                            prepare=case.prepare) for _ in range(runs)]
    bad = next((a["error"] for a in answers if "error" in a),
               next(("wrong sum" for a in answers if not a["ok"]), None))
    if bad is not None:
        return str(bad)
    return (statistics.median(a["wall"] for a in answers) / n * 1e6,
            max(growth_mib(a) for a in answers))


def cost_row(case: CostCase, sizes: tuple[int, ...], repeats: int, *, quick: bool,
             budget: float) -> list[str]:
    """µs/item per size, largest / smallest, RSS growth per size."""
    gone = missing_modules(case.requires)
    skip = (f"not installed ({', '.join(gone)})" if gone else
            "skipped by --quick" if quick and case.expensive else None)
    if skip is not None:
        progress(f"{case.label}: {skip}")
        return [case.backend, case.label, skip] + [""] * (2 * len(sizes))
    costs: dict[int, float] = {}
    cells: list[str] = []
    growths: list[str] = []
    failed = False
    for n in sizes:
        predicted = costs[max(costs)] * 1e-6 * n if costs else None
        if failed:   # a smaller size failed: this one would too
            cells.append("-")
        elif predicted is not None and predicted > budget:
            about = f"{predicted / 60:.0f} min" if predicted >= 120 else fmt_s(predicted)
            cells.append(f"not run: ~{about} predicted (budget {budget:g} s)")
        else:
            runs = 1 if predicted is not None and predicted > ONE_RUN_S else repeats
            timeout = 120.0 if predicted is None else max(60.0, 4 * predicted)
            got = measure_size(case, n, runs, timeout)
            progress(f"{case.label} N={n:,}: " + (got if isinstance(got, str) else
                                                   f"{got[0]:.3f} µs/item, {got[1]:.1f} MiB"))
            if isinstance(got, str):
                failed = True
                cells.append(failure_cell(got, 50))
            else:
                costs[n] = got[0]
                cells.append(fmt_us(got[0]) + (" (1 run)" if runs < repeats else ""))
                growths.append(f"{got[1]:,.1f}")
                continue
        growths.append("-")
    if len(costs) < 2:
        return [case.backend, case.label, *cells, "-", *growths]
    lo, hi = min(costs), max(costs)
    ratio = fmt_ratio(costs[hi] / costs[lo])
    if (lo, hi) != (sizes[0], sizes[-1]):
        ratio += f" ({power(hi)} / {power(lo)})"
    return [case.backend, case.label, *cells, ratio, *growths]


def cost_table(sizes: tuple[int, ...], repeats: int, *, quick: bool, budget: float,
               pattern: str) -> str:
    """Table 7b, its rows measured now (those whose backend/label contain ``pattern``)."""
    rows = [cost_row(c, sizes, repeats, quick=quick, budget=budget) for c in COST_CASES
            if not pattern or pattern.lower() in f"{c.backend} {c.label}".lower()]
    names = [power(n) for n in sizes]
    return "\n".join([
        "", f"### Table 7b - per-item cost of a trivial function from {names[0]} to "
        f"{names[-1]} items (µs/item; flat is the target)", "",
        f"A warm pool maps inc (ainc) over range(N), summing the results as they arrive; "
        f"µs/item = wall / N, median of {repeats} run(s) per size (1 when a run is predicted "
        f"past {ONE_RUN_S:g} s); largest / smallest = µs/item at the largest N measured over "
        "the smallest (about 1 is flat; below 1, the map's fixed cost still shows at the "
        "smallest N). A size whose run is predicted (from the largest size before it) past "
        f"{budget:g} s is not run and says so. RSS growth: of the mapping process, its pool "
        "started after the baseline (worker processes and the dask cluster are not in it). "
        "Each run in a fresh forked process.", "",
        md_table(["group", "system", *[f"µs/item {s}" for s in names], "largest / smallest",
                  *[f"RSS growth MiB {s}" for s in names]], rows),
    ])
