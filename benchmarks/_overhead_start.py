"""Table 1b - cold start of a 2-worker process pool: create it, get the result
of one ``inc(1)``, shut it down; and when that result arrived.

Adding a row is one more ``StartCase`` in ``START_CASES``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import conveyor
from _harness import (
    Case,
    Stats,
    error_cell,
    kill_loky_executors,
    md_table,
    progress,
    ratio_column,
    verdict,
)
from workloads import inc

TARGET_START_S = 0.050     # conveyor process backend: create 2 workers + first result + stop
START_REFERENCE = "ProcessPoolExecutor(2)"

Mark = Callable[[], None]


@dataclass(frozen=True, kw_only=True)
class StartCase(Case):
    """``start(mark)`` creates the pool, gets one result (calling ``mark()`` as it
    arrives) and shuts the pool down; ``how``: what it starts, and how."""

    how: str
    start: Callable[[Mark], None]


def start_ppe(mark: Mark) -> None:
    with ProcessPoolExecutor(2) as ex:
        ex.submit(inc, 1).result()
        mark()


def start_mp_pool(mark: Mark) -> None:
    with mp.Pool(2) as pool:   # __exit__ is terminate(): what the `with` form costs
        pool.apply(inc, (1,))
        mark()


def start_joblib(mark: Mark) -> None:
    from joblib import Parallel, delayed

    kill_loky_executors()   # not timed above the call: it is a no-op (killed last time)
    Parallel(n_jobs=2)(delayed(inc)(x) for x in [1])
    mark()
    kill_loky_executors()   # joblib keeps its workers 300 s: stopping them is part of it


def start_loky(mark: Mark) -> None:
    import loky

    ex = loky.get_reusable_executor(max_workers=2)
    ex.submit(inc, 1).result()
    mark()
    ex.shutdown(wait=True, kill_workers=True)


def start_mpire(mark: Mark) -> None:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=2, start_method="fork") as pool:
        pool.map(inc, [1])
        mark()


def start_pebble(mark: Mark) -> None:
    from pebble import ProcessPool

    with ProcessPool(max_workers=2) as pool:
        pool.schedule(inc, args=(1,)).result()
        mark()


def start_conveyor_map(mark: Mark) -> None:
    results = conveyor.map(inc, [1], backend="process", workers=2)
    for _ in results:
        mark()   # the one result; leaving the loop ends the run and stops its worker


def start_conveyor_pool_submit(mark: Mark) -> None:
    with conveyor.Pool(backend="process", workers=2) as pool:
        pool.submit(inc, 1).result()
        mark()


def start_conveyor_pool_map(mark: Mark) -> None:
    with conveyor.Pool(backend="process", workers=2) as pool:
        for _ in pool.map(inc, [1]):
            mark()


START_CASES: list[StartCase] = [
    StartCase(group="processes", label=START_REFERENCE, how="2 forks; submit(inc, 1).result()",
              start=start_ppe),
    StartCase(group="processes", label="multiprocessing.Pool(2)",
              how="2 forks; apply(inc, (1,)); terminate", start=start_mp_pool),
    StartCase(group="processes", label="joblib Parallel(n_jobs=2) loky",
              how="loky workers (fresh interpreters); 1 delayed call; then killed",
              start=start_joblib, requires=("joblib",)),
    StartCase(group="processes", label="loky get_reusable_executor(2)",
              how="fresh interpreters; submit; shutdown(kill_workers=True)",
              start=start_loky, requires=("loky",)),
    StartCase(group="processes", label="mpire WorkerPool(2)",
              how="2 forks; map(inc, [1])", start=start_mpire, requires=("mpire",)),
    StartCase(group="processes", label="pebble ProcessPool(2)",
              how="2 forks; schedule(inc, (1,)).result()", start=start_pebble,
              requires=("pebble",)),
    StartCase(group="processes",
              label="conveyor.map(inc, [1], backend='process', workers=2)",
              how="fresh interpreters, started on demand (1 item: 1 worker)",
              start=start_conveyor_map, backend="process", target=TARGET_START_S),
    StartCase(group="processes", label="conveyor.Pool(backend='process', workers=2).submit",
              how="2 fresh interpreters, started at Pool(); submit(inc, 1).result()",
              start=start_conveyor_pool_submit, backend="process", target=TARGET_START_S),
    StartCase(group="processes", label="conveyor.Pool(backend='process', workers=2).map",
              how="2 fresh interpreters, started at Pool(); map(inc, [1])",
              start=start_conveyor_pool_map, backend="process", target=TARGET_START_S),
]


def measure_start(case: StartCase, repeats: int) -> tuple[Stats, Stats]:
    """(create + first result + shut down, time to the first result), in seconds."""
    total: list[float] = []
    first: list[float] = []
    for _ in range(repeats):
        marks: list[float] = []
        t0 = time.perf_counter()
        case.start(lambda marks=marks: marks.append(time.perf_counter()))
        t1 = time.perf_counter()
        if len(marks) != 1:
            raise AssertionError(f"expected one result, got {len(marks)}")
        total.append(t1 - t0)
        first.append(marks[0] - t0)
    return Stats.of(total), Stats.of(first)


def start_table(args: argparse.Namespace, repeats: int) -> str:
    kill_loky_executors()   # joblib/loky rows below must start from nothing
    rows: list[list[str]] = []
    medians: dict[str, float] = {}
    for case in START_CASES:
        if not case.selected(args.rows):
            continue
        reason = case.skip_reason(args.quick)
        if reason is not None:
            rows.append([case.group, case.label, case.how, reason, "", "", "", ""])
            progress(f"cold start: {case.label}: {reason}")
            continue
        try:
            total, first = measure_start(case, repeats)
        except Exception as exc:  # keep the table going; the row reports the failure
            rows.append([case.group, case.label, case.how, error_cell(exc), "", "", "", ""])
            progress(f"cold start: {case.label}: {exc!r}")
            continue
        medians[case.label] = total.median
        rows.append([case.group, case.label, case.how, f"{total.median * 1e3:.1f}",
                     f"{total.min * 1e3:.1f}-{total.max * 1e3:.1f}",
                     f"{first.median * 1e3:.1f}", "",
                     verdict(total.median * 1e3, None if case.target is None
                             else case.target * 1e3, " ms", quick=args.quick)])
        progress(f"done: cold start: {case.label}: {total.median * 1e3:.1f} ms")
    ratio_column(rows, medians, START_REFERENCE, 6)
    return "\n".join([
        "",
        "#### Table 1b - cold start of a 2-worker process pool (ms; lower is better)",
        "",
        f"Median (min-max) of {repeats} runs of: create the pool, get the result of one "
        "inc(1), shut the pool down (its workers gone); 'first result' = when that result "
        "reached the caller. "
        f"Target: conveyor process backend ≤ {TARGET_START_S * 1e3:g} ms. "
        f"vs PPE = this row / the {START_REFERENCE} row.",
        "",
        md_table(["group", "system", "what it starts", "create + result + stop (ms)",
                  "min-max", "first result (ms)", "vs PPE", "target"], rows),
    ])
