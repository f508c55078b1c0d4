"""Table 5 - what the caller sees when a worker process dies or a task never returns.

What it checks (behaviour, not speed)
    crash   8 tasks on 2 workers; each sleeps 0.2 s and returns its index,
            except task 3, which calls ``os._exit(1)``: its worker process dies
            without an exception (as under a segfault or the OOM killer).
    hang    the same, but task 3 sleeps "forever" (1e6 s); the caller asks for
            a 2 s per-task timeout in whatever way the library offers one.

    Per scenario: what the caller sees (the exception types, or HANG), when
    the failure surfaced (seconds since the work was handed over), how many of
    the 7 good results the caller got, whether the same pool still runs a task
    afterwards, whether the Python process then exits on its own, and how many
    of the scenario's processes are still running 1 s after it exited.

    Each scenario runs in a fresh child process in its own session:
    ``python benchmarks/failure_behaviour.py --scenario NAME``. The parent
    polls the child's process tree every 50 ms and remembers every descendant
    (workers in sessions of their own too, as conveyor's are), kills what is
    left of it after ``--timeout`` seconds (default 30 s; a scenario that works
    needs < 10 s) and reports that as a hang; "left running" counts the
    processes of its session and the remembered descendants still alive, which
    are then killed (only processes this script started).

    conveyor target (process backend): 7/7 good results (with
    ``on_error="raise"``: every result before the failing item, then the error,
    as the builtin ``map`` does), the failing item reported as ``WorkerCrashed``
    / ``TaskTimeout`` and attributed to item 3, within timeout + 1 s of the
    call, the pool usable afterwards, the process exits on its own, nothing
    left running.

    The scenarios are in ``_failure_crash.py`` and ``_failure_hang.py``, what
    they share (the clock of the call, the lines they print) in
    ``_failure_child.py``; the rows that name them are ``CASES`` below.

Run (from the project root)
    python benchmarks/failure_behaviour.py              # every scenario
    python benchmarks/failure_behaviour.py --quick      # conveyor + 2 stdlib rows, times / 4
    python benchmarks/failure_behaviour.py --rows crash # substring of group/label/name
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _children import ProcessWatch, session_pids
from _failure_child import (
    BAD,
    GOOD,
    TASK_S,
    TIMEOUT_S,
    Ctx,
    N,
)
from _failure_crash import (
    crash_conveyor_map_raise,
    crash_conveyor_map_return,
    crash_conveyor_pool_map_return,
    crash_conveyor_pool_submit,
    crash_dask,
    crash_joblib_loky_generator,
    crash_joblib_loky_list,
    crash_loky_executor,
    crash_mp_pool_apply_async,
    crash_mp_pool_imap,
    crash_mp_pool_map,
    crash_mpire_imap,
    crash_mpire_map,
    crash_pebble_map,
    crash_pebble_schedule,
    crash_ppe_map,
    crash_ppe_submit,
)
from _failure_hang import (
    hang_asyncio_to_thread,
    hang_asyncio_wait_for,
    hang_conveyor_map_raise,
    hang_conveyor_map_return,
    hang_conveyor_pool_map_return,
    hang_conveyor_pool_schedule,
    hang_dask_result_timeout,
    hang_joblib_loky_timeout,
    hang_joblib_threading_timeout,
    hang_loky_kill_workers,
    hang_mp_pool_apply_async,
    hang_mpire_task_timeout,
    hang_pebble_map_timeout,
    hang_pebble_schedule_timeout,
    hang_ppe_result_timeout,
    hang_tpe_result_timeout,
)
from _harness import (
    Case,
    footer,
    header,
    md_table,
    missing_modules,
    progress,
)

QUICK_SCALE = 0.25          # --quick: every sleep and timeout x 0.25
DEADLINE_SLACK_S = 1.0      # conveyor target: the failure surfaces within timeout + 1 s


# ---------------------------------------------------------------------------
# The rows
# ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class FailCase(Case):
    """``expect``: for a conveyor row with a target, the error the failing item must
    get; ``expect_good``: the good results it must deliver."""

    name: str
    run: Callable[[Ctx], None]
    expect: str | None = None
    expect_good: int = GOOD

    def selected(self, pattern: str) -> bool:
        return not pattern or pattern.lower() in f"{self.group} {self.label} {self.name}".lower()


def case(fn: Callable[[Ctx], None], label: str, *, requires: tuple[str, ...] = (),
         quick: bool = False, expect: str | None = None, expect_good: int = GOOD,
         heavy: bool = False) -> FailCase:
    """A row; peers are skipped by --quick unless ``quick`` (conveyor rows always run)."""
    conv = label.startswith("conveyor")
    return FailCase(group=fn.__name__.split("_")[0], label=label, name=fn.__name__, run=fn,
                    requires=requires, backend="process" if conv else None,
                    expensive=heavy or not (conv or quick), expect=expect,
                    expect_good=expect_good)


CASES: list[FailCase] = [
    case(crash_ppe_map, "ProcessPoolExecutor(2).map", quick=True),
    case(crash_ppe_submit, "ProcessPoolExecutor(2) submit + wait"),
    case(crash_mp_pool_map, "multiprocessing.Pool(2).map"),
    case(crash_mp_pool_imap, "multiprocessing.Pool(2).imap"),
    case(crash_mp_pool_apply_async, "multiprocessing.Pool(2).apply_async + get(timeout=5)"),
    case(crash_joblib_loky_list, "joblib Parallel(n_jobs=2) loky", requires=("joblib",)),
    case(crash_joblib_loky_generator, "joblib Parallel(n_jobs=2, return_as='generator')",
         requires=("joblib",)),
    case(crash_loky_executor, "loky get_reusable_executor(2) submit + wait",
         requires=("loky",)),
    case(crash_mpire_map, "mpire WorkerPool(2).map(chunk_size=1)", requires=("mpire",)),
    case(crash_mpire_imap, "mpire WorkerPool(2).imap(chunk_size=1)", requires=("mpire",)),
    case(crash_pebble_schedule, "pebble ProcessPool(2).schedule + wait", requires=("pebble",)),
    case(crash_pebble_map, "pebble ProcessPool(2).map", requires=("pebble",)),
    case(crash_dask, "dask LocalCluster(2 procs x 1 thread) client.map",
         requires=("distributed",), heavy=True),
    case(crash_conveyor_map_return,
         "conveyor.map(f, xs, backend='process', workers=2, on_error='return')",
         expect="WorkerCrashed"),
    case(crash_conveyor_map_raise, "conveyor.map(f, xs, backend='process', workers=2)",
         expect="WorkerCrashed raised", expect_good=BAD),
    case(crash_conveyor_pool_map_return,
         "conveyor.Pool(backend='process', workers=2).map(f, xs, on_error='return')",
         expect="WorkerCrashed"),
    case(crash_conveyor_pool_submit, "conveyor.Pool(backend='process', workers=2) submit + wait",
         expect="WorkerCrashed"),
    case(hang_ppe_result_timeout, "ProcessPoolExecutor(2) submit + result(timeout=2)"),
    case(hang_tpe_result_timeout, "ThreadPoolExecutor(2) submit + result(timeout=2)"),
    case(hang_mp_pool_apply_async, "multiprocessing.Pool(2).apply_async + get(timeout=2)"),
    case(hang_joblib_loky_timeout, "joblib Parallel(n_jobs=2, timeout=2) loky",
         requires=("joblib",)),
    case(hang_joblib_threading_timeout, "joblib Parallel(n_jobs=2, timeout=2, 'threading')",
         requires=("joblib",)),
    case(hang_mpire_task_timeout, "mpire WorkerPool(2).map(task_timeout=2)",
         requires=("mpire",)),
    case(hang_pebble_schedule_timeout, "pebble ProcessPool(2).schedule(timeout=2)",
         requires=("pebble",)),
    case(hang_pebble_map_timeout, "pebble ProcessPool(2).map(timeout=2)", requires=("pebble",)),
    case(hang_asyncio_wait_for, "asyncio.wait_for(coroutine, 2) + gather", quick=True),
    case(hang_asyncio_to_thread, "asyncio.wait_for(to_thread(f), 2) + gather"),
    case(hang_loky_kill_workers, "loky submit + result(timeout=2) + kill_workers",
         requires=("loky",)),
    case(hang_dask_result_timeout, "dask client.map + result(timeout=2)",
         requires=("distributed",), heavy=True),
    case(hang_conveyor_map_return,
         "conveyor.map(f, xs, backend='process', workers=2, timeout=2, on_error='return')",
         expect="TaskTimeout"),
    case(hang_conveyor_map_raise,
         "conveyor.map(f, xs, backend='process', workers=2, timeout=2)",
         expect="TaskTimeout raised", expect_good=BAD),
    case(hang_conveyor_pool_map_return,
         "conveyor.Pool(backend='process', workers=2).map(f, xs, timeout=2, "
         "on_error='return')", expect="TaskTimeout"),
    case(hang_conveyor_pool_schedule,
         "conveyor.Pool(backend='process', workers=2).schedule(f, (x,), timeout=2)",
         expect="TaskTimeout"),
]
BY_NAME = {c.name: c for c in CASES}


# ---------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------

def run_scenario(name: str, scale: float, timeout: float, linger: float) -> dict[str, Any]:
    """Run one scenario in a child process (own session); what happened."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--scenario", name,
           "--scale", str(scale)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, start_new_session=True)
        watch = ProcessWatch(proc.pid)
        killed, alive_at_kill = False, 0
        try:
            while proc.poll() is None:
                watch.poll()
                if time.perf_counter() - t0 > timeout:
                    killed = True
                    alive = set(session_pids(proc.pid)) | set(watch.alive()) | {proc.pid}
                    alive_at_kill = len(alive)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)   # the session this script made
                    watch.kill_alive()
                    proc.wait()
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:   # Ctrl-C in the parent: never leave it behind
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                watch.kill_alive()
                proc.wait()
        elapsed = time.perf_counter() - t0
        left: set[int] = set()
        if not killed:
            time.sleep(linger)   # let workers notice that their parent is gone
            left = set(session_pids(proc.pid)) | set(watch.alive())
        for pid in session_pids(proc.pid):   # processes this scenario started, only
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        watch.kill_alive()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    events: list[dict[str, Any]] = []
    summary = None
    for line in stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                d = json.loads(line)
                if "summary" in d:
                    summary = d["summary"]
                else:
                    events.append(d)
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()][-1:]
    return {"killed": killed, "rc": proc.returncode, "elapsed": elapsed, "summary": summary,
            "events": events, "left": len(left), "alive_at_kill": alive_at_kill,
            "stderr_tail": tail}


def describe_exit(r: dict[str, Any], timeout: float) -> str:
    if r["killed"]:
        where = "at exit, after its summary" if r["summary"] else "in the call"
        return f"HANG {where}: killed at {timeout:g} s ({r['alive_at_kill']} procs)"
    return f"exits rc={r['rc']} at {r['elapsed']:.1f} s"


def left_cell(r: dict[str, Any]) -> str:
    return "n/a (killed)" if r["killed"] else str(r["left"])


def seen_cell(seen: object) -> str:
    if isinstance(seen, dict):
        return ", ".join(f"{k} x{v}" for k, v in seen.items()) or "none"
    return str(seen or "none")


def judge(c: FailCase, r: dict[str, Any], s: dict[str, Any], limit: float, quick: bool) -> str:
    """The conveyor target, criterion by criterion."""
    if c.expect is None:
        return ""
    if quick:
        return "not judged (--quick)"
    seen = seen_cell(s.get("seen"))
    expect = c.expect if c.expect.endswith("raised") else f"{c.expect} x1"
    misses = []
    if seen != expect:
        misses.append(f"saw {seen}, not {expect}")
    if s.get("bad_ok") is not True:
        misses.append(f"error not attributed to item {BAD}")
    if s.get("detect_s", 1e9) > limit:
        misses.append(f"surfaced after {limit:g} s")
    if s.get("good") != c.expect_good:
        misses.append(f"{s.get('good')}/{GOOD} good, not {c.expect_good}")
    if not str(s.get("usable", "")).startswith(("yes", "n/a (one-shot); a new map: yes")):
        misses.append("pool not usable")
    if r["killed"] or r["rc"] != 0:
        misses.append("did not exit cleanly")
    if r["left"]:
        misses.append(f"{r['left']} left running")
    return "met" if not misses else "**MISSED**: " + "; ".join(misses)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--scenario", help=argparse.SUPPRESS)
    ap.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=None,
                    help="kill a scenario after this many seconds (default 30; --quick 10)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: sleeps and timeouts x {QUICK_SCALE:g}, conveyor and "
                         "two stdlib rows only")
    ap.add_argument("--rows", default="", help="only rows whose group/label/name contains this")
    ap.add_argument("--json", type=Path, default=None,
                    help="also write the raw results of every scenario to this file")
    return ap


def run(args: argparse.Namespace) -> str:
    scale = QUICK_SCALE if args.quick else 1.0
    timeout = args.timeout if args.timeout is not None else (10.0 if args.quick else 30.0)
    linger = 0.5 if args.quick else 1.0
    task_s, per_task_timeout = TASK_S * scale, TIMEOUT_S * scale
    limit = per_task_timeout + DEADLINE_SLACK_S
    started = time.perf_counter()
    out = [header(
        "Table 5 - failure behaviour: a worker killed by os._exit(1); a task that never "
        "returns",
        f"{N} tasks x {task_s:g} s on 2 workers; task {BAD} is the bad one, so {GOOD} good "
        f"results are possible. Per-task timeout {per_task_timeout:g} s where the library "
        "has one. 'surfaced at': seconds from handing the work over to the first sign of "
        f"the failure. Each scenario in a fresh child process in its own session, killed "
        f"after {timeout:g} s; 'left running': its processes still alive {linger:g} s after "
        "it exited (workers in sessions of their own included).",
        notes=[
            f"conveyor target (process backend): {GOOD}/{GOOD} good results (with "
            f"on_error='raise': the {BAD} results before the failing item, then its error, "
            "as the builtin map does), the failing item reported as WorkerCrashed / "
            f"TaskTimeout and attributed to item {BAD}, surfaced within timeout + "
            f"{DEADLINE_SLACK_S:g} s = {limit:g} s, the pool (or a new conveyor.map) "
            "usable after, the process exits on its own, nothing left running",
        ] + ([f"**--quick smoke run**: sleeps and timeouts x {QUICK_SCALE:g}; most peers "
              "skipped"] if args.quick else []),
    )]
    rows: list[list[str]] = []
    no_psutil = missing_modules(["psutil"])
    for c in CASES:
        if not c.selected(args.rows):
            continue
        reason = ("not installed (psutil, needed to find the processes left running)"
                  if no_psutil else c.skip_reason(args.quick))
        if reason is not None:
            rows.append([c.group, c.label, reason, "", "", "", "", "", "", ""])
            progress(f"{c.name}: {reason}")
            continue
        r = run_scenario(c.name, scale, timeout, linger)
        s = r["summary"]
        if s:
            rows.append([c.group, c.label, seen_cell(s.get("seen")),
                         f"{s.get('detect_s', 0):.2f} s", f"{s.get('good')}/{GOOD}",
                         s.get("usable", ""), describe_exit(r, timeout), left_cell(r),
                         judge(c, r, s, limit, args.quick), s.get("note", "")])
        else:
            got = sum(1 for e in r["events"] if e.get("event") == "result")
            exit_cell = describe_exit(r, timeout)
            if not r["killed"]:
                exit_cell = f"crashed: rc={r['rc']} at {r['elapsed']:.1f} s"
            rows.append([c.group, c.label, "HANG (nothing raised)" if r["killed"] else
                         "no summary", "never", f"{got}/{GOOD} before the hang" if got
                         else f"0/{GOOD}", "-", exit_cell, left_cell(r),
                         "**MISSED**: hung" if c.expect and not args.quick else
                         ("not judged (--quick)" if c.expect else ""),
                         "; ".join(r["stderr_tail"])[:100]])
        progress(f"done: {c.name}: {' | '.join(rows[-1][2:9])}")
        if args.json is not None:
            with args.json.open("a") as fh:
                fh.write(json.dumps({"name": c.name, **r}) + "\n")
    out.append(md_table(["group", "system", "caller sees", "surfaced at", "good results",
                         "pool usable after", "process exit", "left running", "target",
                         "note"], rows))
    out.append("\nOne scenario: `python benchmarks/failure_behaviour.py --scenario NAME` "
               "(NAME: " + ", ".join(c.name for c in CASES) + ").")
    out.append(footer(started))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.scenario:
        BY_NAME[args.scenario].run(Ctx(args.scale))
        return
    # On SIGTERM (run_all's timeout, say) unwind, so the running scenario is killed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(run(args), flush=True)


if __name__ == "__main__":
    main()
