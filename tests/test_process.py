"""backend="process": supervised worker processes, with real crashes, signals and timeouts.

No mocks: workers really die (``os._exit``, SIGKILL, a segfault, a kill from
outside), tasks really hang, Ctrl-C is a real SIGINT to a real interpreter.
Every fault test checks with psutil that the processes it cares about (worker
pids, grandchildren the tasks started) are gone afterwards.
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.errors import (
    TaskTimeout,
    WorkerCrashed,
    WorkerInitError,
    item_index,
)

from ._crossproc import Gate, Tally, publish
from ._process_helpers import (
    drain,
    drain_timed,
    read_published,
    wait_gone,
    worker_pids,
)

# -- 1. functions travel by cloudpickle ------------------------------------------

def test_lambda_and_closure_run_in_worker_processes() -> None:
    """A lambda and a closure reach the workers by cloudpickle and give map's answer."""
    me = os.getpid()
    out = drain(conveyor.map(lambda x: (x * x, os.getpid()), range(20), backend="process",
                             workers=2))
    assert [v for v, _ in out] == [x * x for x in range(20)]
    assert me not in {pid for _, pid in out}

    offset = 100

    def add_offset(x: int) -> tuple[int, int]:
        return x + offset, os.getpid()

    out = drain(conveyor.map(add_offset, range(20), backend="process", workers=2))
    assert [v for v, _ in out] == [x + 100 for x in range(20)]
    assert me not in {pid for _, pid in out}


SCRIPT_WITHOUT_GUARD = textwrap.dedent("""
    import os
    import conveyor

    print("module body ran in", os.getpid(), flush=True)

    def cube(x):
        return x ** 3, os.getpid()

    out = list(conveyor.map(cube, range(30), backend="process", workers=2))
    print("values", [v for v, _ in out])
    print("pids", " ".join(str(p) for p in sorted({p for _, p in out})))
""")


def test_script_without_main_guard(tmp_path: Path) -> None:
    """A script with no `if __name__ == "__main__"` guard maps its own function on processes."""
    script = tmp_path / "no_guard.py"
    script.write_text(SCRIPT_WITHOUT_GUARD)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    body = [line for line in lines if line.startswith("module body ran in")]
    assert len(body) == 1, proc.stdout   # the workers never ran the script's body
    script_pid = int(body[0].split()[-1])
    assert f"values {[x ** 3 for x in range(30)]}" in lines
    pids_line = [line for line in lines if line.startswith("pids ")]
    assert len(pids_line) == 1
    workers = {int(p) for p in pids_line[0].split()[1:]}
    assert workers and script_pid not in workers
    assert not wait_gone(workers)


# -- 2. crash isolation ------------------------------------------------------------

def test_crashes_fail_only_their_item_and_the_pool_recovers(tmp_path: Path) -> None:
    """os._exit(3), SIGKILL and a segfault fail only their item with WorkerCrashed (right
    pid and exit code); the pool replaces those workers and keeps working."""
    crashes = {3: 3, 7: -signal.SIGKILL, 11: -signal.SIGSEGV}
    pid_dir = str(tmp_path)

    def work(x: int) -> tuple[int, int]:
        if x in (3, 7, 11):
            publish(os.path.join(pid_dir, f"pid-{x}"), str(os.getpid()))
        if x == 3:
            os._exit(3)
        if x == 7:
            os.kill(os.getpid(), signal.SIGKILL)
        if x == 11:
            ctypes.string_at(0)   # segmentation fault
        return x * 10, os.getpid()

    with conveyor.Pool(backend="process", workers=2) as pool:
        warm = worker_pids()
        assert len(warm) == 2
        out: list[Any] = drain(pool.map(work, range(16), batch=1, on_error="return"))
        assert len(out) == 16
        crashed: set[int] = set()
        for x, r in enumerate(out):
            if x in crashes:
                assert isinstance(r, WorkerCrashed), (x, r)
                assert r.pid == int(read_published(tmp_path / f"pid-{x}")), (x, r)
                assert r.exitcode == crashes[x], (x, r)
                assert item_index(r) == x
                crashed.add(r.pid)
            else:
                assert not isinstance(r, BaseException), (x, r)
                assert r[0] == x * 10
        assert len(crashed) == 3
        assert not wait_gone(crashed)

        again = drain(pool.map(lambda x: (x + 1, os.getpid()), range(8)))
        assert [v for v, _ in again] == list(range(1, 9))
        assert not crashed & {pid for _, pid in again}
        now = worker_pids()
        assert not crashed & now
        assert warm - crashed <= now   # the workers that did not crash still serve
    assert not wait_gone(warm | now | crashed)


def test_crash_mid_batch_reruns_earlier_items_and_keeps_later_ones(tmp_path: Path) -> None:
    """With batch=8 and a crash at position 3, items 0-2 run again and 4-7 still run once."""
    tally = Tally()
    pid_file = str(tmp_path / "crashed")

    def work(x: int) -> int:
        tally.add(x)
        if x == 3:
            publish(pid_file, str(os.getpid()))
            os._exit(3)
        return x * 2

    results = conveyor.map(work, range(16), backend="process", workers=2, batch=8,
                           on_error="return")
    out: list[Any] = drain(results)
    crash = out[3]
    assert isinstance(crash, WorkerCrashed), crash
    assert crash.exitcode == 3
    assert crash.pid == int(read_published(Path(pid_file)))
    assert [r for i, r in enumerate(out) if i != 3] == [2 * i for i in range(16) if i != 3]
    assert tally.count(3) == 1
    for i in (0, 1, 2):
        assert tally.count(i) >= 2, (i, tally.count(i))   # their outcomes died with the worker
    for i in range(4, 16):
        assert tally.count(i) == 1, (i, tally.count(i))
    # the core decided those re-runs, and counted them: not as retries
    assert results.stats.rerun == sum(tally.count(i) - 1 for i in (0, 1, 2)) >= 3
    assert results.stats.retried == 0
    assert not wait_gone({crash.pid})


def test_worker_killed_from_outside_fails_only_its_item(tmp_path: Path) -> None:
    """SIGKILL sent from outside to the worker running item 5 fails just item 5; the run goes on."""
    gate = Gate()
    victim = str(tmp_path / "victim")

    def work(x: int) -> int:
        if x == 5:
            publish(victim, str(os.getpid()))
            gate.wait(10)   # never opened: only the kill ends this
        return x + 1

    try:
        t0 = time.monotonic()
        results = conveyor.map(work, range(12), backend="process", workers=2,
                               on_error="return")
        pid = int(read_published(Path(victim)))
        assert pid in worker_pids()
        os.kill(pid, signal.SIGKILL)
        out: list[Any] = drain(results)
        elapsed = time.monotonic() - t0
    finally:
        gate.set()
    crash = out[5]
    assert isinstance(crash, WorkerCrashed), crash
    assert (crash.pid, crash.exitcode) == (pid, -signal.SIGKILL)
    assert item_index(crash) == 5
    assert [r for i, r in enumerate(out) if i != 5] == [x + 1 for x in range(12) if x != 5]
    assert elapsed < 8   # nothing waited for the gate's 10 s
    assert not wait_gone({pid})


def test_crash_on_first_attempt_is_retried(tmp_path: Path) -> None:
    """With retries=1, a task whose worker dies on the first attempt runs again and succeeds."""
    tally = Tally()
    pid_file = str(tmp_path / "first-attempt")

    def work(x: int) -> int:
        if tally.add(x) == 1 and x == 2:
            publish(pid_file, str(os.getpid()))
            os._exit(4)
        return x * 3

    out = drain(conveyor.map(work, range(6), backend="process", workers=2, batch=1,
                             retries=1, backoff=0.01))
    assert out == [x * 3 for x in range(6)]
    assert tally.count(2) == 2
    assert not wait_gone({int(read_published(Path(pid_file)))})


# -- 3. timeouts stop the work -------------------------------------------------------

def test_timeout_kills_the_worker_and_what_the_task_started(tmp_path: Path) -> None:
    """timeout=0.5 on a hung task: TaskTimeout within 1.5 s, its worker and its grandchild
    are killed, and its batch-mates still run."""
    hung = str(tmp_path / "hung")

    def work(x: int) -> int:
        if x == 1:
            started = time.monotonic()
            child = subprocess.Popen(["sleep", "1000"])
            publish(hung, f"{os.getpid()} {child.pid} {started!r}")
            time.sleep(1000)
        return x

    got: list[int] = []
    errors: list[tuple[BaseException, float]] = []
    r: Any
    for arrived, r in drain_timed(conveyor.map(work, range(6), backend="process", workers=2,
                                               batch=3, timeout=0.5, on_error="return",
                                               ordered=False)):
        if isinstance(r, BaseException):
            errors.append((r, arrived))
        else:
            got.append(r)
    worker_s, grandchild_s, started_s = read_published(Path(hung)).split()
    worker, grandchild, started = int(worker_s), int(grandchild_s), float(started_s)
    assert sorted(got) == [0, 2, 3, 4, 5]
    assert len(errors) == 1
    error, arrived = errors[0]
    assert isinstance(error, TaskTimeout), error
    assert item_index(error) == 1
    assert arrived - started <= 0.5 + 1.0, arrived - started
    assert not wait_gone({worker, grandchild})


# -- 4. worker life cycle -----------------------------------------------------------

def test_initializer_runs_once_per_worker_and_fills_worker_state() -> None:
    """initializer(*initargs) runs once in each worker; tasks read what it left in worker_state."""
    inits = Tally()

    def init(tag: str, tally: Tally) -> None:
        conveyor.worker_state()["tag"] = tag
        tally.add(os.getpid())

    def work(x: int) -> tuple[int, str, int]:
        return x, conveyor.worker_state()["tag"], os.getpid()

    with conveyor.Pool(backend="process", workers=2, initializer=init,
                       initargs=("ready", inits)) as pool:
        workers = worker_pids()
        first = drain(pool.map(work, range(30)))
        second = drain(pool.map(work, range(30)))
    assert len(workers) == 2
    for out in (first, second):
        assert [x for x, _, _ in out] == list(range(30))
        assert {tag for _, tag, _ in out} == {"ready"}
        assert {pid for _, _, pid in out} <= workers
    assert len(inits.stamps()) == 2   # one run per worker, none per map or per task
    for pid in workers:
        assert inits.count(pid) == 1
    assert not wait_gone(workers)


def test_failing_initializer_fails_tasks_with_worker_init_error(tmp_path: Path) -> None:
    """An initializer that raises makes every task fail with WorkerInitError (cause: its error)."""
    pid_dir = str(tmp_path)

    def init() -> None:
        publish(os.path.join(pid_dir, f"init-{os.getpid()}"), "")
        raise ValueError("no model today")

    out: list[Any] = drain(conveyor.map(lambda x: x, range(6), backend="process", workers=2,
                                        initializer=init, on_error="return"))
    workers = {int(f.name.split("-")[1]) for f in tmp_path.glob("init-*")
               if not f.name.endswith(".tmp")}   # (a worker killed while it published)
    assert workers
    assert not wait_gone(workers)
    assert len(out) == 6
    for r in out:
        assert isinstance(r, WorkerInitError), r
        assert isinstance(r.__cause__, ValueError), r.__cause__
        assert "no model today" in str(r.__cause__)

    with pytest.raises(WorkerInitError):
        drain(conveyor.map(lambda x: x, range(6), backend="process", workers=2,
                           initializer=init))


@pytest.mark.parametrize("batch", ["auto", 8])
def test_max_tasks_per_worker_replaces_workers(batch: Any) -> None:
    """max_tasks_per_worker=3: no worker serves more than 3 tasks, each fresh worker runs the
    initializer again, and every result is right."""
    inits = Tally()

    def init(tally: Tally) -> None:
        conveyor.worker_state()["n"] = 0
        tally.add(os.getpid())

    def work(x: int) -> tuple[int, int, int]:
        state = conveyor.worker_state()
        state["n"] += 1
        return x * x, os.getpid(), state["n"]

    out = drain(conveyor.map(work, range(20), backend="process", workers=2, batch=batch,
                             max_tasks_per_worker=3, initializer=init, initargs=(inits,)))
    assert [v for v, _, _ in out] == [x * x for x in range(20)]
    per_pid = collections.Counter(pid for _, pid, _ in out)
    assert max(per_pid.values()) <= 3, per_pid
    assert len(per_pid) >= 7
    assert max(n for _, _, n in out) <= 3   # a fresh worker has a fresh worker_state
    for pid in per_pid:
        assert inits.count(pid) == 1
    assert not wait_gone(per_pid)
