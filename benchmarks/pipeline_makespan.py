"""Table 6 - makespan of a three-stage pipeline (I/O -> CPU -> I/O), as a ratio to the ideal.

What it measures
    1,000 items through three stages, each with its own workers:

    1. "download": ``time.sleep(0.020)`` (or ``asyncio.sleep``), 16 workers;
    2. "parse": ``cpu_burn(n)``, pure-Python CPU work holding the GIL, n
       calibrated so that one call takes about 5 ms here, on 2 processes;
    3. "store": ``time.sleep(0.010)`` (or ``asyncio.sleep``), 8 workers.

    The parse stage is the bottleneck (1,000 x 5 ms / 2 = 2.5 s; download
    needs 1.25 s of its workers' time, store 1.25 s), so the ideal makespan is
    the parse stage's total work divided by its 2 workers, plus one item's
    fill and drain through the two other stages (20 ms + 10 ms). The time of
    one parse call is measured in this process, sequentially, at the start and
    at the end of the run (their mean is used; both are shown). Each cell is
    measured / ideal, 1.00 being perfect: median (min-max) of ``--repeats``
    runs, each run end to end (start the stages' workers, push every item
    through, stop them), because that is what running a pipeline costs.

    Every system gets the same bounded hand-offs: at most 32 items wait
    between two stages (the hand-written versions' ``Queue(32)``, pypeln's
    ``maxsize=32``; conveyor's stages hold at most their window). The
    reference row is the parse stage alone on ``multiprocessing.Pool``: what
    this machine's 2 cores give for the bottleneck's work with nothing else
    running.

Run (from the project root)
    python benchmarks/pipeline_makespan.py           # Markdown table on stdout
    python benchmarks/pipeline_makespan.py --quick   # 200 items, 1 ms of CPU, 1 repeat
    python benchmarks/pipeline_makespan.py --rows conveyor
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import asyncio
import functools
import multiprocessing as mp
import queue
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import conveyor
from _harness import (
    Case,
    Stats,
    error_cell,
    fmt_s,
    footer,
    header,
    md_table,
    progress,
    verdict,
)
from cpu_speedup import calibrate
from workloads import apass_after, cpu_burn, pass_after

ITEMS = 1000
QUICK_ITEMS = 200
DOWNLOAD_S, PARSE_S, STORE_S = 0.020, 0.005, 0.010
QUICK_SCALE = 0.2          # --quick: every stage's time x 0.2
DOWNLOAD_WORKERS, PARSE_WORKERS, STORE_WORKERS = 16, 2, 8
HANDOFF = 32               # items that may wait between two stages
TARGET = 1.10              # conveyor: makespan / ideal


@dataclass(frozen=True)
class Workload:
    items: int
    n: int                 # cpu_burn(n): one parse call
    download_s: float
    store_s: float

    def args(self) -> list[int]:
        return [self.n] * self.items


# run(workload) -> the results (any order)
Run = Callable[[Workload], Sequence[Any]]


@dataclass(frozen=True, kw_only=True)
class PipelineCase(Case):
    run: Run
    stage_alone: bool = False   # the reference row: the parse stage only


# ---------------------------------------------------------------------------
# Hand-written pipelines
# ---------------------------------------------------------------------------

_END = object()


def threads_and_queues(w: Workload) -> list[Any]:
    """The textbook version: worker threads per stage, a bounded ``queue.Queue`` between
    stages, an end marker passed along; the parse stage's threads hand their item to a
    ``ProcessPoolExecutor(2)`` and wait for it (4 threads, so a next item is always queued)."""
    out: list[Any] = []
    with ProcessPoolExecutor(PARSE_WORKERS) as ppe:
        q1: queue.Queue[Any] = queue.Queue(HANDOFF)
        q2: queue.Queue[Any] = queue.Queue(HANDOFF)
        q3: queue.Queue[Any] = queue.Queue(HANDOFF)

        def parse(n: int) -> int:
            return ppe.submit(cpu_burn, n).result()

        def store(x: Any) -> None:
            out.append(pass_after(x, w.store_s))   # list.append is atomic

        def feed() -> None:
            for x in w.args():
                q1.put(x)
            q1.put(_END)

        def stage(fn: Callable[[Any], Any], qin: queue.Queue[Any],
                  qout: queue.Queue[Any] | None, k: int) -> list[threading.Thread]:
            def worker() -> None:
                while True:
                    x = qin.get()
                    if x is _END:
                        qin.put(_END)    # let this stage's other workers see it
                        return
                    y = fn(x)
                    if qout is not None:
                        qout.put(y)
            threads = [threading.Thread(target=worker) for _ in range(k)]
            for t in threads:
                t.start()
            return threads

        feeder = threading.Thread(target=feed)
        feeder.start()
        stages = [
            (stage(functools.partial(pass_after, seconds=w.download_s), q1, q2,
                   DOWNLOAD_WORKERS), q2),
            (stage(parse, q2, q3, 2 * PARSE_WORKERS), q3),
            (stage(store, q3, None, STORE_WORKERS), None),
        ]
        feeder.join()
        for threads, downstream in stages:
            for t in threads:
                t.join()
            if downstream is not None:
                downstream.put(_END)
    return out


async def _asyncio_pipeline(w: Workload) -> list[Any]:
    out: list[Any] = []
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(PARSE_WORKERS) as ppe:
        q1: asyncio.Queue[Any] = asyncio.Queue(HANDOFF)
        q2: asyncio.Queue[Any] = asyncio.Queue(HANDOFF)
        q3: asyncio.Queue[Any] = asyncio.Queue(HANDOFF)

        async def download(x: Any) -> None:
            await q2.put(await apass_after(x, w.download_s))

        async def parse(n: int) -> None:
            await q3.put(await loop.run_in_executor(ppe, cpu_burn, n))

        async def store(x: Any) -> None:
            out.append(await apass_after(x, w.store_s))

        async def worker(fn: Callable[[Any], Any], qin: asyncio.Queue[Any]) -> None:
            while True:
                x = await qin.get()
                try:
                    await fn(x)
                finally:
                    qin.task_done()

        workers = [asyncio.create_task(worker(fn, q))
                   for fn, q, k in ((download, q1, DOWNLOAD_WORKERS),
                                    (parse, q2, 2 * PARSE_WORKERS),
                                    (store, q3, STORE_WORKERS))
                   for _ in range(k)]
        try:
            for x in w.args():
                await q1.put(x)
            for q in (q1, q2, q3):   # each stage drained before the next is joined
                await q.join()
        finally:
            for t in workers:
                t.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return out


def asyncio_and_queues(w: Workload) -> list[Any]:
    """The asyncio pattern the issue generalises: worker coroutines around bounded
    ``asyncio.Queue``s, ``join`` per stage, then cancel (and await) the workers; the parse
    stage goes through ``run_in_executor`` on a ``ProcessPoolExecutor(2)``."""
    return asyncio.run(_asyncio_pipeline(w))


def pypeln_pipeline(w: Workload) -> list[Any]:
    import pypeln as pl

    stage = pl.thread.map(functools.partial(pass_after, seconds=w.download_s), w.args(),
                          workers=DOWNLOAD_WORKERS, maxsize=HANDOFF)
    stage = pl.process.map(cpu_burn, stage, workers=PARSE_WORKERS, maxsize=HANDOFF)
    stage = pl.thread.map(functools.partial(pass_after, seconds=w.store_s), stage,
                          workers=STORE_WORKERS, maxsize=HANDOFF)
    return list(stage)


def conveyor_stream(store_backend: str, *, consume: str = "for") -> Run:
    def run(w: Workload) -> list[Any]:
        s = (conveyor.stream(w.args())
             .map(functools.partial(pass_after, seconds=w.download_s),
                  workers=DOWNLOAD_WORKERS, name="download")
             .map(cpu_burn, backend="process", workers=PARSE_WORKERS, name="parse"))
        if store_backend == "asyncio":
            s = s.map(functools.partial(apass_after, seconds=w.store_s), backend="asyncio",
                      workers=STORE_WORKERS, name="store")
        else:
            s = s.map(functools.partial(pass_after, seconds=w.store_s),
                      workers=STORE_WORKERS, name="store")
        if consume == "async for":
            async def consume_all() -> list[Any]:
                return [x async for x in s]
            return asyncio.run(consume_all())
        return s.to_list()
    return run


def stage_alone(w: Workload) -> list[Any]:
    with mp.get_context("fork").Pool(PARSE_WORKERS) as pool:
        return pool.map(cpu_burn, w.args(), chunksize=1)


CASES = [
    PipelineCase(group="reference", label="parse stage alone: multiprocessing.Pool(2).map "
                 "(fork, chunksize=1), no other stage", run=stage_alone, stage_alone=True),
    PipelineCase(group="hand-written", label="threads + queue.Queue(32) per stage; parse via "
                 "ProcessPoolExecutor(2)", run=threads_and_queues),
    PipelineCase(group="hand-written", label="asyncio worker coroutines + asyncio.Queue(32); "
                 "parse via run_in_executor(ProcessPoolExecutor(2))", run=asyncio_and_queues),
    PipelineCase(group="library", label="pypeln: thread.map | process.map | thread.map "
                 "(maxsize=32)", run=pypeln_pipeline, requires=("pypeln",)),
    PipelineCase(group="conveyor", label="conveyor.stream: threads -> process -> threads",
                 run=conveyor_stream("thread"), backend="process", target=TARGET),
    PipelineCase(group="conveyor", label="conveyor.stream: threads -> process -> asyncio",
                 run=conveyor_stream("asyncio"), backend="process", target=TARGET),
    PipelineCase(group="conveyor", label="conveyor.stream: threads -> process -> asyncio, "
                 "consumed by `async for` in asyncio.run",
                 run=conveyor_stream("asyncio", consume="async for"), backend="process",
                 target=TARGET),
]


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------

def parse_time(n: int, calls: int) -> float:
    """Seconds of one ``cpu_burn(n)`` here, sequentially (median of ``calls``)."""
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        cpu_burn(n)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def ideal(w: Workload, parse_s: float, *, alone: bool = False) -> float:
    bottleneck = max(w.items * w.download_s / DOWNLOAD_WORKERS,
                     w.items * parse_s / PARSE_WORKERS,
                     w.items * w.store_s / STORE_WORKERS)
    return bottleneck if alone else bottleneck + w.download_s + w.store_s


def measure(case: PipelineCase, w: Workload, repeats: int) -> list[float]:
    expected = cpu_burn(w.n)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        results = case.run(w)
        times.append(time.perf_counter() - t0)
        if len(results) != w.items or any(r != expected for r in results):
            raise AssertionError(f"{len(results)} results for {w.items} items, or wrong ones")
    return times


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per row (default 5)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK_ITEMS} items, stage times x {QUICK_SCALE:g}, "
                         "1 repeat")
    ap.add_argument("--rows", default="", help="only rows whose group/label contains this")
    return ap


def cell(ratios: Stats) -> str:
    return f"{ratios.median:.2f} ({ratios.min:.2f}-{ratios.max:.2f})"


def run(args: argparse.Namespace) -> str:
    started = time.perf_counter()
    scale = QUICK_SCALE if args.quick else 1.0
    repeats = 1 if args.quick else args.repeats
    n = calibrate(PARSE_S * scale)
    w = Workload(QUICK_ITEMS if args.quick else ITEMS, n, DOWNLOAD_S * scale, STORE_S * scale)
    out = [header(   # before the rows run: the header records the machine's state at start
        "Table 6 - three-stage pipeline makespan / ideal (1.00 = perfect; lower is better)",
        f"{w.items:,} items: download sleep {w.download_s * 1e3:g} ms ({DOWNLOAD_WORKERS} "
        f"workers) -> parse cpu_burn(n={n:,}) ({PARSE_WORKERS} processes) -> store sleep "
        f"{w.store_s * 1e3:g} ms ({STORE_WORKERS} workers). Ideal = {w.items:,} x one parse "
        f"call / {PARSE_WORKERS} + one item's download and store. Cell: median (min-max) of "
        f"{repeats} end-to-end runs (start the workers, run every item, stop them). All rows "
        "measured in this one process run.",
        notes=[
            f"targets: conveyor ≤ {TARGET:g} x ideal, and no worse than the best hand-written "
            "version of this run",
            f"at most {HANDOFF} items wait between two stages in every system; conveyor's "
            "stages keep their default window and input order, pypeln's come out in "
            "completion order",
            "the hand-written versions give their parse stage 4 threads (coroutines) for "
            "the 2 processes, so a next item is always queued for a process that finishes",
            "the reference row's ratio is to the parse stage's own ideal (no fill or drain): "
            "above 1.00 it shows what running 2 busy processes costs on this machine beside "
            "the sequential calibration",
        ] + ([f"**--quick smoke run**: {QUICK_ITEMS} items, stage times x {QUICK_SCALE:g}, "
              "1 repeat; worker start-up dominates, ratios are not representative"]
             if args.quick else []),
    )]
    calls = 20 if args.quick else 100
    before = parse_time(n, calls)
    measured: list[tuple[PipelineCase, list[float] | str]] = []
    for case in CASES:
        if not case.selected(args.rows):
            continue
        reason = case.skip_reason(args.quick)
        if reason is not None:
            measured.append((case, reason))
            progress(f"{case.label}: {reason}")
            continue
        try:
            times = measure(case, w, repeats)
        except Exception as exc:  # keep the table going; the row reports the failure
            measured.append((case, error_cell(exc)))
            progress(f"{case.label}: {exc!r}")
            continue
        measured.append((case, times))
        progress(f"done: {case.label}: {', '.join(fmt_s(t) for t in times)}")
    after = parse_time(n, calls)
    parse_s = (before + after) / 2
    full, alone = ideal(w, parse_s), ideal(w, parse_s, alone=True)
    out.append(f"One parse call, measured sequentially in this process: {before * 1e3:.2f} ms "
               f"at the start of the run, {after * 1e3:.2f} ms at the end; with their mean, "
               f"the ideal is {fmt_s(full)} (the parse stage alone: {fmt_s(alone)}).\n")

    rows: list[list[str]] = []
    hand: list[float] = []
    for case, result in measured:
        if isinstance(result, str):
            rows.append([case.group, case.label, result, "", ""])
            continue
        ratios = Stats.of(result).scaled(1 / (alone if case.stage_alone else full))
        if case.group == "hand-written":
            hand.append(ratios.median)
        rows.append([case.group, case.label, cell(ratios), fmt_s(statistics.median(result)),
                     verdict(ratios.median, case.target, quick=args.quick)])
    best_hand = min(hand, default=None)
    for row, (case, result) in zip(rows, measured, strict=True):
        if case.is_conveyor and best_hand is not None and not isinstance(result, str):
            ratio = float(row[2].split()[0])
            judged = ("not judged (--quick)" if args.quick else
                      "met" if ratio <= best_hand else "**MISSED**")
            row[4] += f"; no worse than hand-written ({best_hand:.2f}): {judged}"
    out.append(md_table(["group", "system", "makespan / ideal", "median time", "target"],
                        rows))
    out.append(footer(started))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    print(run(build_parser().parse_args(argv)), flush=True)


if __name__ == "__main__":
    main()
