"""Table 3 - speedup of a pure-Python CPU-bound map over sequential, on 2 workers.

What it measures
    40 calls of ``cpu_burn(n)`` (a plain ``for`` loop summing squares: it holds
    the GIL throughout), n calibrated at start-up so that one call takes about
    20 ms on this machine. Every system maps the 40 calls with 2 workers; on 2
    cores 2.0 is the ceiling. Speedup = sequential median time / the system's
    median time, where the sequential runs are interleaved with the system's
    own (one before each of its runs): a shared machine's speed drifts over a
    run of minutes, and a ratio of times taken minutes apart would carry that
    drift (the reference scripts divide by one sequential figure taken at the
    start; the table shows it, and the one at the end).

    * warm: median of ``--repeats`` runs on a pool that exists and has run a
      2-item warm-up map (its workers are up). ``conveyor.map`` starts its
      workers at every call, so it has no warm figure;
    * cold: median of ``--cold-repeats`` runs of create pool -> map -> shut
      down (on ~0.8 s of work, worker start-up is a visible share). For
      ``conveyor.map`` that is one call.

    The sequential time is also measured at the start and at the end of the
    run: if the two differ much the machine was busy. All rows are measured in
    this one process run.

Run (from the project root)
    python benchmarks/cpu_speedup.py             # Markdown table on stdout
    python benchmarks/cpu_speedup.py --quick     # ~2 ms tasks, 1 repeat, no dask
    python benchmarks/cpu_speedup.py --rows conveyor

Adding a row is one more ``SpeedupCase`` in ``CASES`` whose factory(warm)
builds the system and yields ``run(args) -> results``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass

import conveyor
from _harness import (
    Case,
    Stats,
    dask_client,
    error_cell,
    fmt_s,
    footer,
    header,
    kill_loky_executors,
    md_table,
    progress,
    quiet_dask_logs,
    verdict,
)
from workloads import cpu_burn

TASKS = 40
TASK_S = 0.020            # one call, calibrated
QUICK_TASK_S = 0.002      # --quick
WORKERS = 2
TARGET_WARM = 1.95        # conveyor process backend, speedup on a warm pool
TARGET_COLD = 1.85        # conveyor process backend, create + map + shut down
TARGET_DASK = 1.8         # conveyor dask backend on a warm 2-worker LocalCluster

Run = Callable[[list[int]], Sequence[int]]
Factory = Callable[[bool], AbstractContextManager[Run]]   # factory(warm)


@dataclass(frozen=True, kw_only=True)
class SpeedupCase(Case):
    """``target``: the least warm speedup; ``target_cold``: the least cold one;
    ``one_shot``: every call starts its own workers (no warm figure)."""

    factory: Factory
    target_cold: float | None = None
    one_shot: bool = False


def calibrate(seconds: float) -> int:
    """n such that cpu_burn(n) takes about ``seconds`` here."""
    n = 50_000
    while True:
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            cpu_burn(n)
            samples.append(time.perf_counter() - t0)
        t = statistics.median(samples)
        if t > seconds / 4:
            return max(1, int(n * seconds / t))
        n *= 4


# ---------------------------------------------------------------------------
# Systems: factory(warm) -> context manager yielding run(args) -> results
# ---------------------------------------------------------------------------

WARMUP = [1] * WORKERS


@contextlib.contextmanager
def sequential(warm: bool) -> Iterator[Run]:
    yield lambda args: list(map(cpu_burn, args))


def split_fork(args: list[int]) -> list[int]:
    """The ceiling: fork WORKERS children, each runs its share of the calls and
    pipes the results back; no pool, no queue, no scheduling."""
    import pickle

    share = [args[i::WORKERS] for i in range(WORKERS)]
    children = []
    for part in share:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # child: compute, send, leave at once
            try:
                os.close(r)
                data = pickle.dumps([cpu_burn(a) for a in part])
                with os.fdopen(w, "wb") as fh:
                    fh.write(data)
            finally:
                os._exit(0)
        os.close(w)
        children.append((pid, r))
    parts = []
    for pid, r in children:
        with os.fdopen(r, "rb") as fh:
            parts.append(pickle.loads(fh.read()))
        os.waitpid(pid, 0)
    out = [0] * len(args)
    for i, part in enumerate(parts):
        out[i::WORKERS] = part
    return out


@contextlib.contextmanager
def bare_fork(warm: bool) -> Iterator[Run]:
    yield split_fork


@contextlib.contextmanager
def tpe(warm: bool) -> Iterator[Run]:
    with ThreadPoolExecutor(WORKERS) as ex:
        if warm:
            list(ex.map(cpu_burn, WARMUP))
        yield lambda args: list(ex.map(cpu_burn, args))


@contextlib.contextmanager
def ppe(warm: bool) -> Iterator[Run]:
    with ProcessPoolExecutor(WORKERS) as ex:
        if warm:
            list(ex.map(cpu_burn, WARMUP))
        yield lambda args: list(ex.map(cpu_burn, args))   # chunksize=1


def mp_pool(method: str) -> Factory:
    @contextlib.contextmanager
    def cm(warm: bool) -> Iterator[Run]:
        with mp.Pool(WORKERS) as pool:
            if warm:
                pool.map(cpu_burn, WARMUP)
            if method == "map":
                yield lambda args: pool.map(cpu_burn, args)   # auto chunksize: 5 here
            else:
                yield lambda args: list(pool.imap(cpu_burn, args))   # chunksize=1
    return cm


@contextlib.contextmanager
def pebble_pool(warm: bool) -> Iterator[Run]:
    from pebble import ProcessPool

    with ProcessPool(max_workers=WORKERS) as pool:
        if warm:
            list(pool.map(cpu_burn, WARMUP).result())
        yield lambda args: list(pool.map(cpu_burn, args).result())


@contextlib.contextmanager
def mpire_pool(warm: bool) -> Iterator[Run]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=WORKERS, start_method="fork", keep_alive=True) as pool:
        if warm:
            pool.map(cpu_burn, WARMUP)
        yield lambda args: pool.map(cpu_burn, args)


@contextlib.contextmanager
def loky_executor(warm: bool) -> Iterator[Run]:
    import loky

    kill_loky_executors()   # a real cold start, not a cached executor
    ex = loky.get_reusable_executor(max_workers=WORKERS)
    try:
        if warm:
            list(ex.map(cpu_burn, WARMUP))
        yield lambda args: list(ex.map(cpu_burn, args))
    finally:
        kill_loky_executors()


def joblib_backend(backend: str) -> Factory:
    @contextlib.contextmanager
    def cm(warm: bool) -> Iterator[Run]:
        from joblib import Parallel, delayed

        kill_loky_executors()
        with Parallel(n_jobs=WORKERS, backend=backend) as par:
            if warm:
                par(delayed(cpu_burn)(a) for a in WARMUP)
            yield lambda args: par(delayed(cpu_burn)(a) for a in args)
        kill_loky_executors()   # joblib keeps loky workers 300 s: the next cold run is cold
    return cm


@contextlib.contextmanager
def dask_cluster(warm: bool) -> Iterator[Run]:
    with dask_client(WORKERS) as client:
        if warm:
            client.gather(client.map(cpu_burn, WARMUP, pure=False))
        yield lambda args: client.gather(client.map(cpu_burn, args, pure=False))


@contextlib.contextmanager
def dask_cluster_no_profiler(warm: bool) -> Iterator[Run]:
    """``client.map`` on a LocalCluster with dask's statistical profiler off (it samples
    every worker thread's stack every 10 ms; the cluster conveyor starts has it off)."""
    import dask

    with dask.config.set({"distributed.worker.profile.enabled": False}), \
            dask_cluster(warm) as run:
        yield run


@contextlib.contextmanager
def conveyor_dask_own(warm: bool) -> Iterator[Run]:
    """``conveyor.Pool(backend="dask")`` with no cluster given: the LocalCluster
    conveyor starts (in a helper process, profiler off, monitors slowed)."""
    with quiet_dask_logs(), conveyor.Pool(backend="dask", workers=WORKERS) as pool:
        if warm:
            list(pool.map(cpu_burn, WARMUP))
        yield lambda args: list(pool.map(cpu_burn, args))


@contextlib.contextmanager
def conveyor_dask(warm: bool) -> Iterator[Run]:
    with dask_client(WORKERS) as client, conveyor.Pool(backend="dask", cluster=client) as pool:
        if warm:
            list(pool.map(cpu_burn, WARMUP))
        yield lambda args: list(pool.map(cpu_burn, args))


def conveyor_pool(backend: str) -> Factory:
    @contextlib.contextmanager
    def cm(warm: bool) -> Iterator[Run]:
        with conveyor.Pool(backend=backend, workers=WORKERS) as pool:  # type: ignore[arg-type]
            if warm:
                list(pool.map(cpu_burn, WARMUP))
            yield lambda args: list(pool.map(cpu_burn, args))
    return cm


@contextlib.contextmanager
def conveyor_map(warm: bool) -> Iterator[Run]:
    yield lambda args: list(conveyor.map(cpu_burn, args, backend="process", workers=WORKERS))


CASES: list[SpeedupCase] = [
    SpeedupCase(group="baseline", label="2 forked processes, 20 calls each, no pool "
                                        "(this machine's ceiling)", factory=bare_fork),
    SpeedupCase(group="threads", label="ThreadPoolExecutor(2).map (GIL-bound)", factory=tpe),
    SpeedupCase(group="threads", label="joblib Parallel(n_jobs=2, backend='threading')",
                factory=joblib_backend("threading"), requires=("joblib",)),
    SpeedupCase(group="threads", label="conveyor.Pool(workers=2).map (threads, GIL-bound)",
                factory=conveyor_pool("thread"), backend="thread"),
    SpeedupCase(group="processes", label="ProcessPoolExecutor(2).map chunksize=1", factory=ppe),
    SpeedupCase(group="processes", label="multiprocessing.Pool(2).map (auto chunksize=5)",
                factory=mp_pool("map")),
    SpeedupCase(group="processes", label="multiprocessing.Pool(2).imap chunksize=1",
                factory=mp_pool("imap")),
    SpeedupCase(group="processes", label="pebble ProcessPool(2).map chunksize=1",
                factory=pebble_pool, requires=("pebble",)),
    SpeedupCase(group="processes", label="mpire WorkerPool(2).map (auto chunk_size)",
                factory=mpire_pool, requires=("mpire",)),
    SpeedupCase(group="processes", label="loky get_reusable_executor(2).map",
                factory=loky_executor, requires=("loky",)),
    SpeedupCase(group="processes", label="joblib Parallel(n_jobs=2) loky",
                factory=joblib_backend("loky"), requires=("joblib",)),
    SpeedupCase(group="processes", label="conveyor.Pool(backend='process', workers=2).map",
                factory=conveyor_pool("process"), backend="process", target=TARGET_WARM,
                target_cold=TARGET_COLD),
    SpeedupCase(group="processes",
                label="conveyor.map(f, args, backend='process', workers=2) [one-shot]",
                factory=conveyor_map, backend="process", target_cold=TARGET_COLD,
                one_shot=True),
    SpeedupCase(group="cluster", label="dask LocalCluster(2 procs x 1 thread) client.map",
                factory=dask_cluster, requires=("distributed",), expensive=True),
    SpeedupCase(group="cluster", label="dask LocalCluster(2 procs x 1 thread, profiler off) "
                "client.map", factory=dask_cluster_no_profiler, requires=("distributed",),
                expensive=True),
    SpeedupCase(group="cluster", label="conveyor.Pool(backend='dask', cluster=client) on a "
                "LocalCluster(2 procs x 1 thread)", factory=conveyor_dask,
                requires=("distributed",), backend="dask", target=TARGET_DASK),
    SpeedupCase(group="cluster", label="conveyor.Pool(backend='dask', workers=2): the "
                "LocalCluster conveyor starts (profiler off, monitors slowed)",
                factory=conveyor_dask_own, requires=("distributed",), backend="dask",
                target=TARGET_DASK),
]


@dataclass(frozen=True)
class Timing:
    """A row's times, each with the sequential runs interleaved with them."""

    warm: Stats | None
    warm_seq: Stats | None
    cold: Stats | None
    cold_seq: Stats | None

    @property
    def speedup_warm(self) -> float | None:
        if self.warm is None or self.warm_seq is None:
            return None
        return self.warm_seq.median / self.warm.median

    @property
    def speedup_cold(self) -> float | None:
        if self.cold is None or self.cold_seq is None:
            return None
        return self.cold_seq.median / self.cold.median


def timed_check(fn: Callable[[], Sequence[int]], expected: list[int]) -> float:
    t0 = time.perf_counter()
    res = fn()
    dt = time.perf_counter() - t0
    if list(res) != expected:
        raise AssertionError("wrong results")
    return dt


def measure(factory: Factory, args: list[int], expected: list[int], repeats: int,
            cold_repeats: int, *, interleave: bool = True) -> Timing:
    """Warm runs on one pool, then cold runs (create + map + shut down); with
    ``interleave``, a sequential run before each of them."""
    def seq() -> float:
        return timed_check(lambda: list(map(cpu_burn, args)), expected)

    warm: list[float] = []
    warm_seq: list[float] = []
    if repeats:
        with factory(True) as run:
            for _ in range(repeats):
                if interleave:
                    warm_seq.append(seq())
                warm.append(timed_check(lambda: run(args), expected))
    cold: list[float] = []
    cold_seq: list[float] = []
    for _ in range(cold_repeats):
        if interleave:
            cold_seq.append(seq())

        def once() -> Sequence[int]:
            with factory(False) as run:
                return run(args)
        cold.append(timed_check(once, expected))

    def stats(xs: list[float]) -> Stats | None:
        return Stats.of(xs) if xs else None
    return Timing(stats(warm), stats(warm_seq), stats(cold), stats(cold_seq))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="warm runs per row (default 5)")
    ap.add_argument("--cold-repeats", type=int, default=3,
                    help="create + map + shut down runs per row (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: ~{QUICK_TASK_S * 1e3:g} ms tasks, 1 repeat, no dask")
    ap.add_argument("--rows", default="", help="only rows whose group/label contains this")
    return ap


def cell(stats: Stats | None) -> str:
    if stats is None:
        return "-"
    return f"{fmt_s(stats.median)} ({stats.spread:.0%})"


def run(args: argparse.Namespace) -> str:
    repeats, cold_repeats = (1, 1) if args.quick else (args.repeats, args.cold_repeats)
    started = time.perf_counter()
    n = calibrate(QUICK_TASK_S if args.quick else TASK_S)
    work = [n] * TASKS
    expected = [cpu_burn(n)] * TASKS
    before = measure(sequential, work, expected, repeats, 0, interleave=False).warm
    assert before is not None
    out = [header(
        "Table 3 - CPU-bound speedup over sequential, 2 workers (2 cores: ceiling 2.0; "
        "higher is better)",
        f"{TASKS} tasks x cpu_burn(n={n:,}) = {before.median / TASKS * 1e3:.1f} ms each "
        f"(sequential {fmt_s(before.median)} at the start of the run). warm = median of "
        f"{repeats} runs on a pool that is up and warmed; cold = median of {cold_repeats} x "
        "(create + map + shut down). Speedup = median of the sequential runs interleaved "
        "with the row's runs (one before each) / median of the row's runs. Time cells: "
        "median (spread). All rows measured in this one process run.",
        notes=[
            f"targets: conveyor process backend ≥ {TARGET_WARM:g} warm (conveyor.Pool) and "
            f"≥ {TARGET_COLD:g} cold (conveyor.Pool created for the call, and conveyor.map); "
            "the anchors on the 2-core reference machine were multiprocessing.Pool 2.05 / "
            "1.93, ProcessPoolExecutor 2.00 / 1.93: read the targets beside the ceiling row "
            "(the work split in two forked processes by hand, no pool) and the best peer of "
            "this run (below the table), which show what this machine allows",
            "conveyor.map starts its workers at every call: it has a cold figure only",
            f"target: conveyor dask backend ≥ {TARGET_DASK:g} warm on a 2-worker LocalCluster "
            "(the anchor for client.map was 1.65 warm); its cold column includes starting "
            "the cluster",
        ] + ([f"**--quick smoke run**: ~{QUICK_TASK_S * 1e3:g} ms tasks and 1 repeat; worker "
              "start-up dominates, speedups are not representative"] if args.quick else []),
    )]
    rows: list[list[str]] = [["baseline", "sequential list(map(f, args)) (start of run)",
                              "1.00", "-", cell(before), "-", ""]]
    best: dict[str, tuple[float, str]] = {}   # "warm"/"cold" -> (best peer speedup, label)
    for case in CASES:
        if not case.selected(args.rows):
            continue
        reason = case.skip_reason(args.quick)
        if reason is not None:
            rows.append([case.group, case.label, reason, "", "", "", ""])
            progress(f"{case.label}: {reason}")
            continue
        try:
            t = measure(case.factory, work, expected,
                        0 if case.one_shot else repeats, cold_repeats)
        except Exception as exc:  # keep the table going; the row reports the failure
            rows.append([case.group, case.label, error_cell(exc), "", "", "", ""])
            progress(f"{case.label}: {exc!r}")
            continue
        s_warm, s_cold = t.speedup_warm, t.speedup_cold
        if not case.is_conveyor and case.group != "baseline":
            for key, value in (("warm", s_warm), ("cold", s_cold)):
                if value is not None and value > best.get(key, (0.0, ""))[0]:
                    best[key] = (value, case.label)
        verdicts = [v for v in (
            ("warm " + verdict(s_warm, case.target, at_least=True, quick=args.quick))
            if case.target is not None else "",
            ("cold " + verdict(s_cold, case.target_cold, at_least=True, quick=args.quick))
            if case.target_cold is not None else "",
        ) if v]
        rows.append([
            case.group, case.label,
            f"{s_warm:.2f}" if s_warm is not None else "- (one-shot)",
            f"{s_cold:.2f}" if s_cold is not None else "-",
            cell(t.warm), cell(t.cold), "; ".join(verdicts),
        ])
        progress(f"done: {case.label}: warm {rows[-1][2]} cold {rows[-1][3]}")
    after = measure(sequential, work, expected, repeats, 0, interleave=False).warm
    assert after is not None
    rows.append(["baseline", "sequential (end of run; start / end)",
                 f"{before.median / after.median:.2f}", "-", cell(after), "-", ""])
    out.append(md_table(["group", "system", "speedup warm", "speedup cold",
                         "warm time (spread)", "cold time (spread)", "target"], rows))
    best_lines = [f"- best {key} speedup of a peer in this run: {best[key][0]:.2f} "
                  f"({best[key][1]})" for key in ("warm", "cold") if key in best]
    if best_lines:
        out.append("\n" + "\n".join(best_lines))
    out.append(footer(started))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    print(run(build_parser().parse_args(argv)), flush=True)


if __name__ == "__main__":
    main()
