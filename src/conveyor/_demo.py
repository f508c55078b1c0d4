"""``conveyor demo``: the classic concurrency examples, stdlib first, then conveyor.

Each pattern is written the way the tutorials teach it (the ``stdlib_*``
functions), then again with conveyor (the ``conveyor_*`` functions); both are
timed with ``time.perf_counter`` and compared with the ideal time. Only the
main thread prints: one line per pattern as it finishes, then one table.

``cpu_bound`` lives here, in an importable module, because
``ProcessPoolExecutor`` has to import it in its worker processes (conveyor's
process backend would also accept it from ``__main__``: it sends functions by
cloudpickle).
"""

from __future__ import annotations

import asyncio
import functools
import math
import multiprocessing
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TextIO

import conveyor

__all__ = [
    "QUICK_SCALE",
    "CpuPlan",
    "Row",
    "async_io",
    "blocking_io",
    "calibrate_cpu",
    "cpu_bound",
    "format_table",
    "plan_cpu_work",
    "run_demo",
    "usable_cpus",
]

#: ``--quick`` runs every duration 20 times shorter.
QUICK_SCALE = 0.05

CALLS = 3  # patterns 1-4 and 6: three tasks of SLEEP seconds each
SLEEP = 1.0
QUEUE_ITEMS = 10  # pattern 7: ten items of QUEUE_SLEEP seconds, three workers
QUEUE_SLEEP = 0.3
QUEUE_WORKERS = 3
CPU_TASKS = 4  # pattern 5: four tasks of about CPU_TASK_SECONDS each, four workers
CPU_WORKERS = 4
CPU_TASK_SECONDS = 0.4

# "spawn" starts clean worker processes on every OS; "fork" (the Linux default
# before Python 3.14) is unsafe once threads are running, and this demo runs
# threads before it gets to processes.
_PROCESSES = multiprocessing.get_context("spawn")


# -- the work -------------------------------------------------------------------


def blocking_io(seconds: float) -> float:
    """Stands for a blocking call (a download, a query): it waits, using no CPU."""
    time.sleep(seconds)
    return seconds


async def async_io(seconds: float) -> float:
    """The same wait, as a coroutine."""
    await asyncio.sleep(seconds)
    return seconds


def cpu_bound(n: int) -> int:
    """Pure-Python arithmetic: it holds the GIL for the whole computation."""
    return sum(i * i for i in range(n))


# -- 1. blocking calls, one after another -----------------------------------------


def stdlib_sequential(seconds: float) -> None:
    for _ in range(CALLS):
        blocking_io(seconds)


def conveyor_sequential(seconds: float) -> None:
    list(conveyor.map(blocking_io, [seconds] * CALLS))


# -- 2. threading.Thread ----------------------------------------------------------


def stdlib_threads(seconds: float) -> None:
    threads = [threading.Thread(target=blocking_io, args=(seconds,)) for _ in range(CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# conveyor: the same conveyor.map as in pattern 1.


# -- 3. ThreadPoolExecutor: submit + as_completed ---------------------------------


def stdlib_as_completed(seconds: float) -> None:
    with ThreadPoolExecutor(max_workers=CALLS) as executor:
        futures = [executor.submit(blocking_io, seconds) for _ in range(CALLS)]
        for future in as_completed(futures):
            future.result()


def conveyor_as_completed(seconds: float) -> None:
    for _ in conveyor.map(blocking_io, [seconds] * CALLS, ordered=False):
        pass


# -- 4. ThreadPoolExecutor.map ----------------------------------------------------


def stdlib_executor_map(seconds: float) -> None:
    with ThreadPoolExecutor(max_workers=CALLS) as executor:
        list(executor.map(blocking_io, [seconds] * CALLS))


# conveyor: the same conveyor.map as in pattern 1.


# -- 5. CPU-bound work: ProcessPoolExecutor.map -----------------------------------


def stdlib_processes(sizes: list[int]) -> None:
    with ProcessPoolExecutor(max_workers=CPU_WORKERS, mp_context=_PROCESSES) as executor:
        list(executor.map(cpu_bound, sizes))


def conveyor_processes(sizes: list[int]) -> None:
    list(conveyor.map(cpu_bound, sizes, backend="process", workers=CPU_WORKERS))


# -- 6. asyncio.create_task + await -----------------------------------------------


async def stdlib_create_task(seconds: float) -> None:
    tasks = [asyncio.create_task(async_io(seconds)) for _ in range(CALLS)]
    for task in tasks:
        await task


def conveyor_coroutines(seconds: float) -> None:
    # a coroutine function, called from sync code: conveyor runs its own event loop
    list(conveyor.map(async_io, [seconds] * CALLS))


# -- 7. worker coroutines on an asyncio.Queue -------------------------------------


async def stdlib_queue(seconds: float) -> None:
    queue: asyncio.Queue[float] = asyncio.Queue()
    for _ in range(QUEUE_ITEMS):
        queue.put_nowait(seconds)

    async def worker() -> None:
        while True:
            item = await queue.get()
            await async_io(item)
            queue.task_done()

    workers = [asyncio.create_task(worker()) for _ in range(QUEUE_WORKERS)]
    await queue.join()
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)


async def conveyor_queue(seconds: float) -> None:
    async for _ in conveyor.amap(async_io, [seconds] * QUEUE_ITEMS, workers=QUEUE_WORKERS):
        pass


# -- measuring --------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One pattern: its timings (seconds) and the conveyor call that replaced the stdlib code."""

    pattern: str
    stdlib: float
    stdlib_ideal: float
    conveyor: float
    conveyor_ideal: float
    conveyor_code: str


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def usable_cpus() -> int:
    """The CPUs this process may run on (fewer than the machine has, in a container)."""
    counter: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)
    if counter is not None:
        return counter() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def calibrate_cpu(target: float) -> int:
    """How many ``cpu_bound`` iterations take about ``target`` seconds on this machine."""
    n = 20_000
    while True:
        elapsed = _timed(functools.partial(cpu_bound, n))
        if elapsed >= min(target, 0.1):
            return max(1_000, round(n * target / elapsed))
        n *= 2


@dataclass(frozen=True)
class CpuPlan:
    """Pattern 5's work: the task sizes, their sequential time (measured once), the ideal."""

    sizes: list[int]
    sequential: float
    cpus: int
    ideal: float


def plan_cpu_work(scale: float) -> CpuPlan:
    n = calibrate_cpu(CPU_TASK_SECONDS * scale)
    sizes = [n] * CPU_TASKS
    sequential = _timed(lambda: [cpu_bound(k) for k in sizes])
    cpus = usable_cpus()
    # equal tasks run in rounds of min(workers, CPUs) at a time
    rounds = math.ceil(CPU_TASKS / min(CPU_WORKERS, cpus))
    return CpuPlan(sizes, sequential, cpus, sequential / CPU_TASKS * rounds)


def _patterns(scale: float, cpu: list[tuple[CpuPlan, Row]]) -> list[Callable[[], Row]]:
    """The seven patterns, each a function that runs both versions and returns its Row."""
    d = SLEEP * scale
    q = QUEUE_SLEEP * scale
    q_ideal = math.ceil(QUEUE_ITEMS / QUEUE_WORKERS) * q
    call = "conveyor.map(blocking_io, items)"

    def sequential() -> Row:
        return Row(f"1. for loop: {CALLS} blocking calls, sequential [1]",
                   _timed(lambda: stdlib_sequential(d)), CALLS * d,
                   _timed(lambda: conveyor_sequential(d)), d, call)

    def threads() -> Row:
        return Row("2. threading.Thread: start + join",
                   _timed(lambda: stdlib_threads(d)), d,
                   _timed(lambda: conveyor_sequential(d)), d, call)

    def completed() -> Row:
        return Row("3. ThreadPoolExecutor: submit + as_completed",
                   _timed(lambda: stdlib_as_completed(d)), d,
                   _timed(lambda: conveyor_as_completed(d)), d,
                   "conveyor.map(blocking_io, items, ordered=False)")

    def executor_map() -> Row:
        return Row("4. ThreadPoolExecutor.map",
                   _timed(lambda: stdlib_executor_map(d)), d,
                   _timed(lambda: conveyor_sequential(d)), d, call)

    def processes() -> Row:
        plan = plan_cpu_work(scale)
        row = Row("5. CPU-bound: ProcessPoolExecutor.map [5]",
                  _timed(lambda: stdlib_processes(plan.sizes)), plan.ideal,
                  _timed(lambda: conveyor_processes(plan.sizes)), plan.ideal,
                  f'conveyor.map(cpu_bound, sizes, backend="process", workers={CPU_WORKERS})')
        cpu.append((plan, row))
        return row

    def create_task() -> Row:
        return Row("6. asyncio: create_task + await",
                   _timed(lambda: asyncio.run(stdlib_create_task(d))), d,
                   _timed(lambda: conveyor_coroutines(d)), d,
                   "conveyor.map(async_io, items), from sync code")

    def queue() -> Row:
        return Row(f"7. asyncio.Queue: {QUEUE_WORKERS} workers, {QUEUE_ITEMS} items",
                   _timed(lambda: asyncio.run(stdlib_queue(q))), q_ideal,
                   _timed(lambda: asyncio.run(conveyor_queue(q))), q_ideal,
                   f"conveyor.amap(async_io, items, workers={QUEUE_WORKERS}), in asyncio.run")

    return [sequential, threads, completed, executor_map, processes, create_task, queue]


# -- reporting --------------------------------------------------------------------


HEADERS = ("pattern", "stdlib", "ideal", "ratio", "conveyor", "ideal", "ratio")


def _seconds(t: float) -> str:
    return f"{t:.3f} s"


def _ratio(t: float, ideal: float) -> str:
    return f"{t / ideal:.2f}x"


def format_table(rows: Sequence[Row]) -> str:
    """The timings as a Markdown-style table (plain text that reads well in a terminal)."""
    cells = [[r.pattern, _seconds(r.stdlib), _seconds(r.stdlib_ideal),
              _ratio(r.stdlib, r.stdlib_ideal), _seconds(r.conveyor),
              _seconds(r.conveyor_ideal), _ratio(r.conveyor, r.conveyor_ideal)]
             for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(HEADERS)]

    def line(values: Sequence[str]) -> str:
        padded = [v.ljust(w) if i == 0 else v.rjust(w)
                  for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-")
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(HEADERS), rule, *(line(c) for c in cells)])


def _conveyor_calls(rows: Sequence[Row]) -> list[str]:
    """Which conveyor call each row timed, one line per distinct call."""
    calls: dict[str, list[str]] = {}
    for row in rows:
        calls.setdefault(row.conveyor_code, []).append(row.pattern.split(".", 1)[0])
    width = max(len(", ".join(numbers)) for numbers in calls.values())
    return ["the conveyor side of each row:"] + [
        f"  {', '.join(numbers).ljust(width)}  {code}" for code, numbers in calls.items()]


def _footnotes(scale: float, cpu: tuple[CpuPlan, Row] | None) -> list[str]:
    d = SLEEP * scale
    notes = [
        "ideal: the time if the tasks overlapped perfectly, limited only by the workers",
        "(and, for CPU work, the CPUs); ratio = time / ideal, so 1.00x is perfect.",
        f"[1] the stdlib version is a plain for loop, sequential by design: its ideal is "
        f"{CALLS} x {_seconds(d)}.",
        f"    conveyor.map runs the same {CALLS} calls on threads: its ideal is {_seconds(d)}.",
    ]
    if cpu is not None:
        plan, row = cpu
        notes += [
            f"[5] {CPU_TASKS} tasks of pure-Python arithmetic took {_seconds(plan.sequential)} "
            "one after another (measured once);",
            f"    ideal = that time spread over min({CPU_WORKERS} workers, {plan.cpus} CPUs) = "
            f"{_seconds(plan.ideal)}.",
            f"    both sides start {CPU_WORKERS} worker processes inside the timed call, "
            "so both times",
            "    include that start-up"
            + (" (which here costs more than the work itself: try a larger --scale)."
               if max(row.stdlib, row.conveyor) > plan.sequential else "."),
            "    stdlib: multiprocessing's spawn, which re-imports __main__ in each worker "
            "(hence the",
            '    if __name__ == "__main__" guard). conveyor: fresh interpreters that never '
            "import __main__",
            "    (functions travel by cloudpickle), so it also works without the guard "
            "and in notebooks.",
        ]
    return notes


def run_demo(scale: float = 1.0, out: TextIO | None = None) -> list[Row]:
    """Run every pattern both ways; print a line per pattern, then the table; return the rows.

    ``scale`` multiplies every duration (``QUICK_SCALE`` for ``--quick``).
    Everything is printed from the calling thread, to ``out`` (default stdout).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    stream = sys.stdout if out is None else out

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    say("conveyor demo: the classic concurrency examples, as the stdlib teaches them, "
        "then with conveyor")
    say(f"Python {platform.python_version()}, {usable_cpus()} CPUs, durations x {scale:g} "
        f"(a 1 s task takes {_seconds(SLEEP * scale)})")
    say()
    cpu: list[tuple[CpuPlan, Row]] = []
    patterns = _patterns(scale, cpu)
    rows: list[Row] = []
    for i, pattern in enumerate(patterns, 1):
        row = pattern()
        rows.append(row)
        name = row.pattern.split(" ", 1)[1].removesuffix(" [1]").removesuffix(" [5]")
        say(f"[{i}/{len(patterns)}] {name:<42}  stdlib {_seconds(row.stdlib)}"
            f"   conveyor {_seconds(row.conveyor)}")
    say()
    say(format_table(rows))
    say()
    for line in [*_conveyor_calls(rows), "", *_footnotes(scale, cpu[0] if cpu else None)]:
        say(line)
    return rows
