"""Table 7 - scale: asyncio at 10^4 workers beside hand-written coroutines; per-item cost.

What it measures
    7a, event-loop scale (issue 14's targets), each ``asyncio.sleep`` workload
    through conveyor and, in the same run, hand-written:

    A  1,000,000 x asyncio.sleep(0.1), workers=10,000   -> ideal 10 s
    B  200,000 x asyncio.sleep(0.01), workers=5,000      -> ideal 0.4 s
    C  Table 2's case B: 2,000 x asyncio.sleep(0.05), k=500, warm -> ideal 0.2 s

    A and B: ``conveyor.map(asleep, it, backend="asyncio", workers=k)`` and
    ``conveyor.amap(...)`` (in ``asyncio.run``) beside the hand-written
    version: k worker coroutines ``for x in it: out.append(await fn(x))``
    over one shared iterator. ``it`` is a lazy ``itertools.repeat``; every
    system collects all the results in a list. C: the second ``map`` of a
    ``conveyor.Pool(backend="asyncio", workers=500)`` (the first is the same
    map, as a warm-up) beside the second run of Table 2's hand-written "k
    worker coroutines" on one loop. Cells: wall median (min-max), x ideal,
    x hand-written (the median over repeats of this run's wall / the
    hand-written run of the same repeat), peak RSS growth (the largest of
    the repeats).

    7b, per-item cost (``_scale_cost.py``): a warm pool of each backend
    (thread, asyncio, process, dask; and ``amap``) maps the trivial ``inc``
    (``ainc``) over ``range(N)`` for N = 10^4 ... 10^7, summing the results as
    they arrive. Cell: wall / N (median of the repeats), and the peak RSS
    growth. "largest / smallest" is the cost at the largest N measured over
    that at the smallest: flat is about 1 (above 1: an item costs more in a
    longer map).

    Every measurement runs in a fresh process of its own (``_isolate.py``:
    forked from this script once it has imported everything, so each starts
    from the interpreter's baseline after imports), and the systems of a
    workload take turns, repeat after repeat (their order rotates), so
    noise on the shared machine hits them all. A 7b size whose run would
    take more than ``--budget`` seconds (predicted from the largest size
    measured before it) is not run, and its cell says so.

Run (from the project root)
    python benchmarks/scale.py            # the full table (see below)
    python benchmarks/scale.py --small    # A, B at 1/50 of the items; N = 10^4, 10^5
    python benchmarks/scale.py --quick    # smoke run (CI): tiny sizes, no dask
    python benchmarks/scale.py --rows amap --sizes 10000,100000

    How long, on an idle 2-core machine: --quick ~2 s; --small ~1.5 min (2.4 min
    at a load average of 6-10). The full table: about 4 min with an engine at
    its targets (A: 3 rounds of ~11 s x 3 systems, B ~17 s, C ~7 s, 7b ~1.5 min,
    mostly dask's 10^7 run and its cluster starts), about 8 min with the
    engine of issue 14's load test (conveyor.map at 46.6 s per A run); at
    most ~25 min if every 7b row's 10^7 run came near its 180 s budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import asyncio
import dataclasses
import functools
import itertools
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import async_peers
import conveyor
from _harness import fmt_s, footer, header, md_table, progress
from _isolate import failure_cell, growth_mib, run_isolated
from _scale_cost import BUDGET_S, cost_table
from sleep_makespan import WORKLOADS as TABLE2
from sleep_makespan import Workload
from workloads import asleep_for

TARGET_A_IDEAL = 1.10      # A: conveyor.map and amap, x ideal
TARGET_A_HAND = 1.05       # A: x hand-written
TARGET_A_MIB = 100.0       # A: peak RSS growth
TARGET_B_HAND = 1.3        # B: x hand-written
TARGET_C_IDEAL = 1.03      # C: Pool.map warm, x ideal (hand-written reached 1.05)
SIZES = (10**4, 10**5, 10**6, 10**7)


@dataclass(frozen=True)
class Preset:
    flag: str            # "" for the full table
    loads: tuple[tuple[Workload, int], ...]   # 7a: (workload, rounds)
    sizes: tuple[int, ...]
    repeats: int         # 7b runs per size


# C is Table 2's case B (Workload's k: the workers), measured warm.
C = dataclasses.replace(next(w for w in TABLE2 if w.key == "B"), key="C")
FULL = Preset("", ((Workload("A", 1_000_000, 0.1, 10_000), 3),
                   (Workload("B", 200_000, 0.01, 5_000), 3), (C, 5)), SIZES, 3)
SMALL = Preset("--small", ((Workload("A", 20_000, 0.1, 2_000), 3),
                           (Workload("B", 20_000, 0.01, 500), 3), (C, 5)), SIZES[:2], 3)
QUICK = Preset("--quick", ((Workload("A", 500, 0.005, 50), 1), (Workload("B", 500, 0.002, 50), 1),
                           (Workload("C", 500, 0.005, 125), 1)), (10**2, 10**3), 1)


def describe(w: Workload) -> str:
    return (f"**{w.key}** {w.n:,} x asyncio.sleep({w.seconds:g}), workers={w.k:,} "
            f"(ideal {fmt_s(w.ideal)})")


# ---------------------------------------------------------------------------
# 7a systems: run(load) -> {"wall": seconds, "count": results}, in the child
# ---------------------------------------------------------------------------

def _answer(t0: float, out: list[Any]) -> dict[str, Any]:
    return {"wall": time.perf_counter() - t0, "count": len(out)}


async def shared_iterator_workers(load: Workload) -> dict[str, Any]:
    """The hand-written reference: k coroutines over one iterator."""
    it = itertools.repeat(load.seconds, load.n)
    out: list[float] = []

    async def worker() -> None:
        for x in it:
            out.append(await asleep_for(x))
    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(load.k)])
    return _answer(t0, out)


def hand_written(load: Workload) -> dict[str, Any]:
    return asyncio.run(shared_iterator_workers(load))


def conveyor_map(load: Workload) -> dict[str, Any]:
    t0 = time.perf_counter()
    with conveyor.map(asleep_for, itertools.repeat(load.seconds, load.n), backend="asyncio",
                      workers=load.k) as results:
        out = list(results)
    return _answer(t0, out)


def conveyor_amap(load: Workload) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        t0 = time.perf_counter()
        async with conveyor.amap(asleep_for, itertools.repeat(load.seconds, load.n),
                                 workers=load.k) as results:
            out = [r async for r in results]
        return _answer(t0, out)
    return asyncio.run(main())


def hand_written_warm(load: Workload) -> dict[str, Any]:
    """Table 2's "k worker coroutines", its second run on one loop."""
    async def main() -> dict[str, Any]:
        xs = [load.seconds] * load.n
        await async_peers.worker_coroutines(asleep_for, xs, load.k)
        t0 = time.perf_counter()
        return _answer(t0, await async_peers.worker_coroutines(asleep_for, xs, load.k))
    return asyncio.run(main())


def conveyor_pool_warm(load: Workload) -> dict[str, Any]:
    xs = [load.seconds] * load.n
    with conveyor.Pool(backend="asyncio", workers=load.k) as pool:
        list(pool.map(asleep_for, xs))
        t0 = time.perf_counter()
        return _answer(t0, list(pool.map(asleep_for, xs)))


@dataclass(frozen=True)
class SleepSystem:
    label: str
    run: Callable[[Workload], dict[str, Any]]
    loads: str                 # the workloads it runs
    reference: bool = False    # the hand-written row the others are divided by


SLEEP_SYSTEMS = (
    SleepSystem("hand-written: k worker coroutines over one iterator", hand_written, "AB",
                reference=True),
    SleepSystem("conveyor.map(asleep, it, backend='asyncio', workers=k)", conveyor_map, "AB"),
    SleepSystem("conveyor.amap(asleep, it, workers=k) in asyncio.run", conveyor_amap, "AB"),
    SleepSystem("hand-written: Table 2's k worker coroutines, 2nd run on one loop",
                hand_written_warm, "C", reference=True),
    SleepSystem("conveyor.Pool(backend='asyncio', workers=k).map, 2nd map", conveyor_pool_warm,
                "C"),
)


def targets(key: str, x_ideal: float | None, x_hand: float | None, mib: float | None
            ) -> list[tuple[str, float | None, float]]:
    """(what, measured, at most) for a conveyor row of workload ``key``."""
    if key == "A":
        return [("x ideal", x_ideal, TARGET_A_IDEAL), ("x hand-written", x_hand, TARGET_A_HAND),
                ("MiB", mib, TARGET_A_MIB)]
    if key == "B":
        return [("x hand-written", x_hand, TARGET_B_HAND)]
    return [("x ideal", x_ideal, TARGET_C_IDEAL)]


def judge(checks: list[tuple[str, float | None, float]], preset: Preset) -> str:
    if preset.flag:
        return f"not judged ({preset.flag})"
    return "; ".join(f"≤ {limit:g} {what}: " + ("not measured" if value is None else
                                                 "met" if value <= limit else "**MISSED**")
                     for what, value, limit in checks)


def spread(walls: list[float]) -> str:
    """'10.612 s (10.590-10.700)': the median, then the range of the runs."""
    text = f"{statistics.median(walls):.3f} s"
    return text if len(walls) == 1 else f"{text} ({min(walls):.3f}-{max(walls):.3f})"


def run_load(load: Workload, rounds: int, systems: list[SleepSystem]
             ) -> dict[str, list[dict[str, Any]]]:
    """Each system's answers, ``rounds`` rounds, the order rotating each round."""
    answers: dict[str, list[dict[str, Any]]] = {s.label: [] for s in systems}
    timeout = 20 * load.ideal + 60   # generous: only a hung run should meet it
    for r in range(rounds):
        k = r % len(systems)
        for s in systems[k:] + systems[:k]:
            a = run_isolated(functools.partial(s.run, load), timeout=timeout)
            if "error" not in a and a["count"] != load.n:
                a = {"error": f"{a['count']:,} results for {load.n:,} items"}
            answers[s.label].append(a)
            progress(f"{load.key} {s.label}: " + (a["error"] if "error" in a else
                                                    f"{a['wall']:.3f} s, {growth_mib(a):.1f} MiB"))
    return answers


def sleep_rows(load: Workload, rounds: int, preset: Preset, pattern: str) -> list[list[str]]:
    systems = [s for s in SLEEP_SYSTEMS if load.key in s.loads]
    # The hand-written row runs whenever a conveyor row of its workload does: it is
    # what they are divided by.
    chosen = [s for s in systems if s.reference or selected(f"{load.key} {s.label}", pattern)]
    if all(s.reference for s in chosen):
        return []
    answers = run_load(load, rounds, chosen)
    ref = next(answers[s.label] for s in chosen if s.reference)
    rows = []
    for s in chosen:
        mine = answers[s.label]
        errors = [a["error"] for a in mine if "error" in a]
        if errors:
            rows.append([load.key, s.label, str(len(mine)), failure_cell(errors[0], 60), "", "",
                         "", ""])
            continue
        walls = [a["wall"] for a in mine]
        pairs = [a["wall"] / b["wall"] for a, b in zip(mine, ref, strict=True) if "error" not in b]
        x_ideal = statistics.median(walls) / load.ideal
        x_hand = statistics.median(pairs) if pairs else None
        growth = max(growth_mib(a) for a in mine)
        verdict = "" if s.reference else judge(targets(load.key, x_ideal, x_hand, growth),
                                                preset)
        if s.reference and load.key == "C":
            verdict = "issue 14: 1.05 x ideal on the reference machine"
        rows.append([load.key, s.label, str(len(walls)),
                     spread(walls), f"{x_ideal:.3f}",
                     "-" if x_hand is None else f"{x_hand:.3f}", f"{growth:,.1f}", verdict])
    return rows


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

def selected(text: str, pattern: str) -> bool:
    return not pattern or pattern.lower() in text.lower()


def choose(args: argparse.Namespace) -> Preset:
    preset = QUICK if args.quick else SMALL if args.small else FULL
    sizes = args.sizes or preset.sizes
    if args.repeats is not None:
        loads = tuple((w, args.repeats) for w, _ in preset.loads)
        return Preset(preset.flag, loads, sizes, args.repeats)
    return Preset(preset.flag, preset.loads, sizes, preset.repeats)


def run(args: argparse.Namespace) -> str:
    preset = choose(args)
    started = time.perf_counter()
    out = [header(
        "Table 7 - scale: asyncio sleeps at thousands of workers, beside hand-written "
        "(x ideal, x hand-written; lower is better)",
        "; ".join(describe(w) for w, _ in preset.loads) + ". Cells: wall median (min-max) "
        "over the runs; x ideal = median / ideal; x hand-written = median over the runs of "
        "(wall / the hand-written wall of the same round); RSS = the largest peak RSS growth "
        "of the runs. Every run in a fresh process forked from this one; the systems of a "
        "workload take turns, round after round.",
        notes=[
            f"targets (issue 14): A: conveyor.map and amap ≤ {TARGET_A_IDEAL:g} x ideal, "
            f"≤ {TARGET_A_HAND:g} x hand-written, ≤ {TARGET_A_MIB:g} MiB RSS growth; B: ≤ "
            f"{TARGET_B_HAND:g} x hand-written; C (Table 2 case B, warm Pool): ≤ "
            f"{TARGET_C_IDEAL:g} x ideal",
            "RSS growth: ru_maxrss after the run minus the process's RSS when it started "
            "(after imports); every system keeps all its results in a list",
            "input: A and B, a lazy itertools.repeat (one shared iterator for the "
            "hand-written workers); C, a list, as in Table 2",
        ] + ([f"**{preset.flag} run**: smaller workloads than the table's (A 1,000,000 x 0.1 "
              "s at 10,000 workers; B 200,000 x 10 ms at 5,000): targets not judged"]
             if preset.flag else []),
    )]
    rows = [row for w, rounds in preset.loads for row in sleep_rows(w, rounds, preset, args.rows)]
    out.append(md_table(["group", "system", "runs", "wall", "x ideal", "x hand-written",
                         "RSS growth MiB", "target"], rows))
    out.append(cost_table(preset.sizes, preset.repeats, quick=preset.flag == "--quick",
                          budget=args.budget, pattern=args.rows))
    out.append(footer(started))
    return "\n".join(out)


def sizes_arg(text: str) -> tuple[int, ...]:
    """``--sizes 10000,100000``: at least one size, each >= 1, ascending."""
    try:
        sizes = tuple(int(s.replace("_", "")) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not whole numbers: {text!r}") from None
    if min(sizes) < 1 or list(sizes) != sorted(set(sizes)):
        raise argparse.ArgumentTypeError(f"sizes must be >= 1 and ascending: {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="smoke run: tiny workloads, 1 run each, no dask (CI)")
    size.add_argument("--small", action="store_true",
                      help="validation run: A 20,000 x 0.1 s at 2,000 workers, B 20,000 x "
                           "10 ms at 500, C as in the full table; N = 10^4, 10^5")
    ap.add_argument("--sizes", type=sizes_arg, default=(), help="7b sizes, comma-separated, "
                    "ascending (default 10^4..10^7; --small 10^4,10^5; --quick 10^2,10^3)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs per cell (default 3; C: 5; --quick: 1)")
    ap.add_argument("--budget", type=float, default=BUDGET_S,
                    help=f"7b: skip a size predicted to run longer (default {BUDGET_S:g} s)")
    ap.add_argument("--rows", default="", help="only rows whose group/label contains this")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # run_all's --table-timeout sends SIGTERM: unwind, so the running child is killed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(run(args), flush=True)


if __name__ == "__main__":
    main()
