"""Table 4 - memory growth when the input is a huge lazy generator.

What it measures
    Each approach maps ``inc`` over ``(i for i in range(N))`` (N = 2,000,000
    by default) and sums the results as they arrive. An approach that streams
    needs O(window) memory; one that drains the iterable first (as
    ``ThreadPoolExecutor.map`` does before Python 3.14's ``buffersize``) holds
    N futures or tasks at once.

    Every approach runs in a FRESH child process, in its own session:
    ``python benchmarks/memory_lazy_input.py --child NAME --n N``. The child
    records its RSS once its pool is created and warmed ("baseline"), then its
    peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) after the map: growth =
    peak - baseline, bytes/item = growth / N. "workers peak" is the largest
    peak RSS of any reaped worker process (``RUSAGE_CHILDREN``), for process
    pools. The parent polls the child's process tree every 50 ms: "tree peak"
    is the largest sum of RSS seen (shared pages of forked workers count once
    per process, so it over-states), and it kills the child's process group if
    the tree passes ``--cap-gib`` or runs past ``--timeout`` seconds, and says
    so in the row. So an approach that explodes cannot take the machine down.
    It also remembers every descendant it saw, so workers that run in sessions
    of their own (conveyor's process backend) are counted and never left behind.

    "wall vs mp imap" = the row's wall time / that of
    ``multiprocessing.Pool(2).imap(f, gen, chunksize=1000)`` (same N): the
    process backend's second target.

Run (from the project root)
    python benchmarks/memory_lazy_input.py                  # every approach
    python benchmarks/memory_lazy_input.py --quick          # N=20,000, few peer process pools
    python benchmarks/memory_lazy_input.py --rows conveyor --n 200000

Adding a row is one more ``MemoryCase`` in ``CASES`` (a unique ``name``, and a
factory yielding ``run(generator) -> sum``, in ``_memory_approaches.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from _children import ProcessWatch
from _harness import (
    Case,
    MiB,
    fmt_s,
    footer,
    header,
    md_table,
    missing_modules,
    progress,
    verdict,
)
from _memory_approaches import (
    Factory,
    aiometer_amap,
    conveyor_amap_sum,
    conveyor_map,
    conveyor_pool,
    dask_map,
    gather_all,
    joblib_generator,
    mp_imap,
    mpdummy_imap,
    mpire_imap,
    on_loop,
    pebble_map,
    ppe_map,
    sequential,
    tpe_map,
    tpe_window,
    worker_coroutines,
)
from workloads import ainc, inc

DEFAULT_N = 2_000_000
QUICK_N = 20_000
DASK_N = 10_000        # dask keeps every task in its scheduler: capped, see the table note
AIOMETER_N = 500_000   # ~40 µs/item: capped to keep the table's run time reasonable
TARGET_MIB = 20.0      # conveyor, every backend: <= 20 MiB growth
WALL_REFERENCE = "mp_imap"   # the process rows' wall time is judged against this row's
TARGET_WALL_RATIO = 1.5      # conveyor process backend: wall <= 1.5 x multiprocessing imap

@dataclass(frozen=True, kw_only=True)
class MemoryCase(Case):
    """``target``: the most growth (MiB); ``wall_target``: the most wall time, as a
    multiple of the WALL_REFERENCE row's."""

    name: str
    factory: Factory
    n_cap: int | None = None
    wall_target: float | None = None

    def size(self, n: int) -> int:
        return n if self.n_cap is None else min(n, self.n_cap)

CASES: list[MemoryCase] = [
    MemoryCase(name="seq", group="baseline", label="sequential sum(map(f, gen)) (the floor)",
               factory=sequential),
    MemoryCase(name="tpe_map", group="threads", label="ThreadPoolExecutor(4).map(f, gen)",
               factory=tpe_map),
    MemoryCase(name="tpe_window", group="threads",
               label="ThreadPoolExecutor(4) + hand-written window of 64 futures",
               factory=tpe_window),
    MemoryCase(name="mpdummy_imap", group="threads",
               label="multiprocessing.dummy.Pool(4).imap(f, gen, chunksize=256)",
               factory=mpdummy_imap),
    MemoryCase(name="joblib_threading_gen", group="threads",
               label="joblib Parallel(4, 'threading', return_as='generator')",
               factory=joblib_generator("threading", 4), requires=("joblib",)),
    MemoryCase(name="conveyor_thread", group="threads",
               label="conveyor.Pool(workers=4).map(inc, gen)",
               factory=conveyor_pool("thread", inc, 4), backend="thread", target=TARGET_MIB),
    MemoryCase(name="conveyor_thread_unordered", group="threads",
               label="conveyor.Pool(workers=4).map(inc, gen, ordered=False)",
               factory=conveyor_pool("thread", inc, 4, ordered=False), backend="thread",
               target=TARGET_MIB),
    MemoryCase(name="conveyor_map_thread", group="threads",
               label="conveyor.map(inc, gen, workers=4) [one-shot]",
               factory=conveyor_map(inc, 4), backend="thread", target=TARGET_MIB),
    MemoryCase(name="asyncio_gather", group="asyncio",
               label="asyncio create_task per item + gather", factory=on_loop(gather_all)),
    MemoryCase(name="asyncio_workers", group="asyncio",
               label="asyncio 100 worker coroutines pulling from gen",
               factory=on_loop(worker_coroutines)),
    MemoryCase(name="aiometer_amap", group="asyncio",
               label=f"aiometer.amap(f, list(gen), max_at_once=100) (needs a Sequence; N capped "
                     f"at {AIOMETER_N:,})",
               factory=on_loop(aiometer_amap), requires=("aiometer",), n_cap=AIOMETER_N),
    MemoryCase(name="conveyor_asyncio", group="asyncio",
               label="conveyor.Pool(backend='asyncio', workers=100).map(ainc, gen)",
               factory=conveyor_pool("asyncio", ainc, 100), backend="asyncio",
               target=TARGET_MIB),
    MemoryCase(name="conveyor_asyncio_unordered", group="asyncio",
               label="conveyor.Pool(backend='asyncio', workers=100).map(ainc, gen, "
                     "ordered=False)",
               factory=conveyor_pool("asyncio", ainc, 100, ordered=False), backend="asyncio",
               target=TARGET_MIB),
    MemoryCase(name="conveyor_amap", group="asyncio",
               label="conveyor.amap(ainc, gen, workers=100) on the caller's loop",
               factory=on_loop(conveyor_amap_sum), backend="asyncio", target=TARGET_MIB),
    MemoryCase(name="joblib_loky_gen", group="processes",
               label="joblib Parallel(2, loky, return_as='generator')",
               factory=joblib_generator("loky", 2), requires=("joblib",), expensive=True),
    MemoryCase(name="ppe_map", group="processes",
               label="ProcessPoolExecutor(2).map(f, gen, chunksize=1000)", factory=ppe_map,
               expensive=True),
    MemoryCase(name="mp_imap", group="processes",
               label="multiprocessing.Pool(2).imap(f, gen, chunksize=1000)", factory=mp_imap),
    MemoryCase(name="mpire_imap", group="processes",
               label="mpire WorkerPool(2).imap(f, gen, chunk_size=1000)", factory=mpire_imap,
               requires=("mpire",), expensive=True),
    MemoryCase(name="pebble_map", group="processes",
               label="pebble ProcessPool(2).map(f, gen, chunksize=1000)", factory=pebble_map,
               requires=("pebble",), expensive=True),
    MemoryCase(name="conveyor_process", group="processes",
               label="conveyor.Pool(backend='process', workers=2).map(inc, gen)",
               factory=conveyor_pool("process", inc, 2), backend="process", target=TARGET_MIB,
               wall_target=TARGET_WALL_RATIO),
    MemoryCase(name="conveyor_process_unordered", group="processes",
               label="conveyor.Pool(backend='process', workers=2).map(inc, gen, "
                     "ordered=False)",
               factory=conveyor_pool("process", inc, 2, ordered=False), backend="process",
               target=TARGET_MIB, wall_target=TARGET_WALL_RATIO),
    MemoryCase(name="conveyor_map_process", group="processes",
               label="conveyor.map(inc, gen, backend='process', workers=2) [one-shot]",
               factory=conveyor_map(inc, 2, backend="process"), backend="process",
               target=TARGET_MIB, wall_target=TARGET_WALL_RATIO),
    MemoryCase(name="dask_map", group="cluster",
               label=f"dask client.map(f, list(gen)) (needs a list; N capped at {DASK_N:,})",
               factory=dask_map,
               requires=("distributed",), expensive=True, n_cap=DASK_N),
]
BY_NAME = {c.name: c for c in CASES}


# ---------------------------------------------------------------------------
# Child side
# ---------------------------------------------------------------------------

def child(name: str, n: int) -> None:
    import psutil

    case = BY_NAME[name]
    me = psutil.Process()
    with case.factory() as run:
        base = me.memory_info().rss
        gen = (i for i in range(n))
        t0 = time.perf_counter()
        total = run(gen)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    ok = total == n * (n + 1) // 2
    print(json.dumps({"base": base, "peak": peak, "wall": wall, "ok": ok,
                      "workers_peak": workers_peak}), flush=True)


# ---------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------

def kill_group(pgid: int) -> None:
    """SIGKILL the process group this script created for one child (its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_child(name: str, n: int, cap_bytes: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--n", str(n)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    watch = ProcessWatch(proc.pid)   # its descendants, also those in sessions of their own
    tree_peak, note, t0 = 0, "", time.perf_counter()
    try:
        while proc.poll() is None:
            tree_peak = max(tree_peak, watch.poll())
            if tree_peak > cap_bytes:
                note = f"KILLED: process tree passed the {cap_bytes / 2**30:g} GiB cap"
            elif time.perf_counter() - t0 > timeout:
                note = f"KILLED: still running after {timeout:g} s"
            if note:
                kill_group(proc.pid)
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # e.g. Ctrl-C in the parent: never leave it behind
            kill_group(proc.pid)
            proc.wait()
    kill_group(proc.pid)  # stragglers of this child's own session (orphaned workers)
    watch.kill_alive()    # and its descendants that left that session (conveyor's workers)
    res: dict[str, Any] = {"tree_peak": tree_peak, "note": note, "elapsed":
                           time.perf_counter() - t0}
    for line in out.splitlines():
        if line.startswith("{"):
            res.update(json.loads(line))
    if not note and "peak" not in res:
        last = (err.strip().splitlines() or ["no output"])[-1]
        res["note"] = f"ERROR child exited {proc.returncode}: {last}"
    return res


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=None,
                    help=f"items in the generator (default {DEFAULT_N:,}; --quick {QUICK_N:,})")
    ap.add_argument("--cap-gib", type=float, default=4.0,
                    help="kill a child whose process tree passes this RSS (default 4 GiB)")
    ap.add_argument("--timeout", type=float, default=180.0,
                    help="kill a child still running after this many seconds (default 180)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: N={QUICK_N:,}; most peer process pools and dask skipped")
    ap.add_argument("--rows", default="", help="only rows whose group/label contains this")
    return ap


def run(args: argparse.Namespace) -> str:
    n_all = args.n if args.n is not None else (QUICK_N if args.quick else DEFAULT_N)
    timeout = min(args.timeout, 60.0) if args.quick else args.timeout
    started = time.perf_counter()
    ref_label = BY_NAME[WALL_REFERENCE].label
    out = [header(
        "Table 4 - memory growth mapping a lazy generator of N small ints "
        "(MiB; lower is better)",
        f"N = {n_all:,} (dask: {min(n_all, DASK_N):,}, aiometer: {min(n_all, AIOMETER_N):,}; "
        "compare those two by bytes/item); results summed as they arrive; each "
        "approach in a fresh child process of this one run; growth = peak RSS - RSS once "
        "the pool is up and warm. MiB = 2^20 bytes.",
        notes=[
            f"target: conveyor ≤ {TARGET_MIB:g} MiB growth on every backend and ordering "
            "(bounded by its window, whatever N); process backend also: wall ≤ "
            f"{TARGET_WALL_RATIO:g} x the wall of {ref_label} ('wall vs mp imap' = this row's "
            "wall / that row's, same N)",
            "whose memory: growth, baseline and peak are the RSS of the process that maps "
            "(the parent of any worker processes), where a pool that drains the input keeps "
            "it. Worker processes are not in it: 'workers peak' is the largest peak RSS of "
            "any reaped worker process (RUSAGE_CHILDREN), 'tree peak' the largest sum of RSS "
            "over the whole process tree, polled every 50 ms (forked workers share pages "
            "with the parent but are counted in full; conveyor's workers are fresh "
            "interpreters, which share nothing)",
            "wall: from the first item taken to the sum; the pools are up and warm, except "
            "conveyor.map [one-shot], whose wall includes starting (and stopping) its workers",
            f"a child is killed if its process tree passes {args.cap_gib:g} GiB RSS or runs "
            f"past {timeout:g} s; the row then says so",
        ] + ([f"**--quick smoke run**: N = {n_all:,}; growth figures are too small to judge "
              "the target"] if args.quick else []),
    )]
    rows: list[list[str]] = []
    walls: dict[str, tuple[float, int]] = {}      # label -> (wall seconds, N)
    verdicts: dict[str, str] = {}                  # label -> growth verdict
    no_psutil = missing_modules(["psutil"])
    for case in CASES:
        if not case.selected(args.rows):
            continue
        n = case.size(n_all)
        reason = ("not installed (psutil, needed to measure RSS)" if no_psutil
                  else case.skip_reason(args.quick))
        if reason is not None:
            rows.append([case.group, case.label, f"{n:,}", reason] + [""] * 8)
            progress(f"{case.name}: {reason}")
            continue
        r = run_child(case.name, n, int(args.cap_gib * 2**30), timeout)
        if "peak" in r:
            growth = r["peak"] - r["base"]
            note = ("WRONG SUM " if not r["ok"] else "") + r["note"]
            walls[case.label] = (r["wall"], n)
            verdicts[case.label] = note or verdict(growth / MiB, case.target, " MiB",
                                                   quick=args.quick)
            rows.append([
                case.group, case.label, f"{n:,}", fmt_s(r["wall"]), "",
                f"{r['base'] / MiB:,.0f}", f"{r['peak'] / MiB:,.0f}",
                f"{growth / MiB:,.1f}", f"{growth / n:,.0f}",
                f"{r['workers_peak'] / MiB:,.0f}" if r["workers_peak"] else "-",
                f"{r['tree_peak'] / MiB:,.0f}", "",
            ])
        else:
            rows.append([case.group, case.label, f"{n:,}", f"> {r['elapsed']:.0f} s", "-",
                         "-", "-", "-", "-", "-", f"≥ {r['tree_peak'] / MiB:,.0f}", r["note"]])
        progress(f"done: {case.name}: {' | '.join(rows[-1][3:])}")
    ref = walls.get(ref_label)
    by_label = {c.label: c for c in CASES}
    for row in rows:
        label = row[1]
        if label not in walls:
            continue
        wall, n = walls[label]
        ratio = wall / ref[0] if ref is not None and ref[1] == n and ref[0] > 0 else None
        if ratio is not None:
            row[4] = f"{ratio:.2f}"
        parts = [verdicts[label]]
        case = by_label[label]
        if case.wall_target is not None:
            if ratio is None:
                parts.append(f"wall: no {WALL_REFERENCE} row at this N to compare with")
            else:
                parts.append("wall " + verdict(ratio, case.wall_target, " x mp imap",
                                               quick=args.quick))
        row[11] = "; ".join(p for p in parts if p)
    out.append(md_table(["group", "approach", "N", "wall", "wall vs mp imap", "baseline MiB",
                         "peak MiB", "growth MiB", "bytes/item", "workers peak MiB",
                         "tree peak MiB", "target / note"], rows))
    out.append("\nOne row's child: `python benchmarks/memory_lazy_input.py --child NAME --n N` "
               "(NAME: " + ", ".join(c.name for c in CASES) + ").")
    out.append(footer(started))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.child:
        child(args.child, args.n if args.n is not None else DEFAULT_N)
        return
    # On SIGTERM (run_all's timeout, say) unwind, so the running child's group is killed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(run(args), flush=True)


if __name__ == "__main__":
    main()
