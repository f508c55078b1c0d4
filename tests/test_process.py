"""backend="process": supervised worker processes, with real crashes, signals and timeouts.

No mocks: workers really die (``os._exit``, SIGKILL, a segfault, a kill from
outside), tasks really hang, Ctrl-C is a real SIGINT to a real interpreter.
Every fault test checks with psutil that the processes it cares about (worker
pids, grandchildren the tasks started) are gone afterwards.
"""

from __future__ import annotations

import collections
import ctypes
import decimal
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

import conveyor
from conveyor.errors import (
    NotPicklable,
    RemoteTraceback,
    TaskTimeout,
    WorkerCrashed,
    WorkerInitError,
    item_index,
)

from . import _faults
from ._crossproc import Gate, Tally, publish
from .conftest import child_processes

# -- exceptions raised in worker processes (pickled by reference: module level) --


class Boom(Exception):
    """A task's own exception type, defined in the test module."""


class LockedError(Exception):
    """Cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt: ``__init__`` wants two arguments."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} and {b}")


# -- helpers ---------------------------------------------------------------------

R = TypeVar("R")


def alive(pid: int) -> bool:
    """Is ``pid`` a running (not zombie) process?"""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: Iterable[int], limit: float = 2.0) -> list[int]:
    """Wait (at most ``limit`` s) for ``pids`` to end; the ones still running."""
    deadline = time.monotonic() + limit
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if alive(p)]
    return left


def drain_timed(results: Iterable[R], limit: float = 10.0) -> list[tuple[float, R]]:
    """Iterate ``results`` (in a helper thread) with the arrival time of each; a run still
    going after ``limit`` s fails the test instead of hanging the test session."""
    got: list[tuple[float, R]] = []
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            for r in results:
                got.append((time.monotonic(), r))
        except BaseException as exc:
            failure.append(exc)

    t = threading.Thread(target=consume, name="test-consumer", daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"the map hung: {len(got)} results within {limit} s"
    if failure:
        raise failure[0]
    return got


def drain(results: Iterable[R], limit: float = 10.0) -> list[R]:
    """``list(results)``, failing the test if the run is still going after ``limit`` s."""
    return [r for _, r in drain_timed(results, limit)]


def worker_pids() -> set[int]:
    """The pids of this test process's live children (the conveyor workers)."""
    return {p.pid for p in child_processes()}


def read_published(path: Path, limit: float = 10.0) -> str:
    """The text a task ``publish``-ed at ``path``, waiting for it at most ``limit`` s."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return path.read_text()
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise AssertionError(f"no task published {path} within {limit} s") from None
            time.sleep(0.005)


def line_of(text: str) -> int:
    """The number of the (one) line of this file that is ``text`` (indentation aside)."""
    lines = [i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1)
             if line.strip() == text]
    assert len(lines) == 1, (text, lines)
    return lines[0]


def read_line(proc: subprocess.Popen[bytes], limit: float) -> str:
    """One line of ``proc``'s (unbuffered, binary) stdout, waiting at most ``limit`` s."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + limit
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no line from the subprocess within {limit} s (got {buf!r})"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1)
            assert chunk, f"the subprocess closed its stdout (got {buf!r})"
            buf += chunk
    return buf.decode()


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


# -- 5. errors ---------------------------------------------------------------------

def test_task_exception_keeps_its_type_and_remote_traceback() -> None:
    """A KeyError and a custom exception come back as themselves, with a RemoteTraceback cause
    that shows the line that raised."""
    def work(x: int) -> int:
        if x == 1:
            raise KeyError("missing-key")
        if x == 2:
            raise Boom(f"boom at {x}")
        return x

    out: list[Any] = drain(conveyor.map(work, range(4), backend="process", workers=2,
                                        on_error="return"))
    assert out[0] == 0 and out[3] == 3
    key_error, boom = out[1], out[2]
    assert type(key_error) is KeyError and key_error.args == ("missing-key",)
    assert type(boom) is Boom and str(boom) == "boom at 2"
    for exc, line in ((key_error, 'raise KeyError("missing-key")'),
                      (boom, 'raise Boom(f"boom at {x}")')):
        assert isinstance(exc, BaseException)
        cause = exc.__cause__
        assert isinstance(cause, RemoteTraceback), cause
        assert f'File "{__file__}", line {line_of(line)}, in work' in str(cause), str(cause)
        assert line in str(cause), str(cause)   # the source line itself, as in any traceback

    with pytest.raises(Boom) as info:
        drain(conveyor.map(work, [0, 2, 3], backend="process", workers=2))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert item_index(info.value) == 1


@pytest.mark.parametrize("kind", ["holds_a_lock", "cannot_be_rebuilt"])
def test_unpicklable_exception_becomes_not_picklable(kind: str) -> None:
    """An exception that cannot travel back becomes NotPicklable with its type name, its
    message and the worker-side traceback."""
    def work(x: int) -> int:
        if x == 1:
            if kind == "holds_a_lock":
                raise LockedError("locked out")
            raise TwoArgError("left", "right")
        return x

    out: list[Any] = drain(conveyor.map(work, range(3), backend="process", workers=2,
                                        on_error="return"))
    assert out[0] == 0 and out[2] == 2
    exc = out[1]
    assert isinstance(exc, NotPicklable), exc
    name, message = ("LockedError", "locked out") if kind == "holds_a_lock" else \
        ("TwoArgError", "left and right")
    assert name in str(exc) and message in str(exc), str(exc)
    assert isinstance(exc.__cause__, RemoteTraceback), exc.__cause__
    assert name in str(exc.__cause__)


@pytest.mark.parametrize("kind", ["lock_and_generator", "cannot_be_rebuilt"])
def test_unpicklable_result_fails_only_its_item(kind: str) -> None:
    """Returning a lock or a generator (or an object that pickles but cannot be rebuilt in
    the parent) gives NotPicklable for that item only."""
    def work(x: int) -> Any:
        if x == 2:
            return threading.Lock() if kind == "lock_and_generator" else TwoArgError("a", "b")
        if x == 5:
            return (i for i in range(3)) if kind == "lock_and_generator" else x
        return x

    bad = (2, 5) if kind == "lock_and_generator" else (2,)
    out = drain(conveyor.map(work, range(8), backend="process", workers=2, batch=4,
                             on_error="return"))
    assert len(out) == 8
    for x, r in enumerate(out):
        if x in bad:
            assert isinstance(r, NotPicklable), (x, r)
            assert item_index(r) == x
        else:
            assert r == x


def test_unpicklable_function_is_refused_before_any_work() -> None:
    """A closure over a lock raises NotPicklable (a TypeError) from map at once, naming it."""
    lock = threading.Lock()
    pulled: list[int] = []

    def items() -> Iterator[int]:
        pulled.append(1)
        yield 1

    def guarded(x: int) -> int:
        with lock:
            return x

    with pytest.raises(NotPicklable) as info:
        conveyor.map(guarded, items(), backend="process", workers=2)
    assert isinstance(info.value, TypeError)
    assert "'lock'" in str(info.value), str(info.value)
    assert pulled == []
    assert child_processes() == []   # no worker was started


def test_submit_with_unpicklable_argument_fails_its_future() -> None:
    """As with ProcessPoolExecutor, an argument that cannot be sent fails the call's
    future (a pickle.PicklingError), not submit itself; the message names the argument."""
    import pickle

    with conveyor.Pool(backend="process", workers=1) as pool:
        fut = pool.submit(lambda a, b: a, 1, threading.Lock())
        with pytest.raises(pickle.PicklingError) as info:
            fut.result(timeout=10)
        assert isinstance(info.value, NotPicklable)
        assert "argument 1" in str(info.value), str(info.value)
        error = pool.submit(lambda a, b=None: a, 1, b=threading.Lock()).exception(timeout=10)
        assert isinstance(error, NotPicklable)
        assert "'b'" in str(error), str(error)
        assert pool.submit(lambda a, b: a + b, 1, 2).result(timeout=10) == 3


@pytest.mark.parametrize(("bad", "batch"), [("lock", 1), ("lock", 8),
                                            ("cannot_be_rebuilt", 1), ("cannot_be_rebuilt", 8)])
def test_unpicklable_item_fails_only_that_item(bad: str, batch: int) -> None:
    """An item in the middle of the input that cannot travel to a worker (a lock, or an object
    that pickles but cannot be rebuilt there) fails only itself, with NotPicklable."""
    odd = threading.Lock() if bad == "lock" else TwoArgError("a", "b")
    items: list[Any] = [0, 1, 2, odd, 4, 5, 6, 7, 8, 9]

    def double(x: Any) -> Any:
        return x * 2 if isinstance(x, int) else "the odd item arrived"

    out: list[Any] = drain(conveyor.map(double, items, backend="process", workers=2,
                                        batch=batch, on_error="return"))
    assert len(out) == 10
    assert isinstance(out[3], NotPicklable), out[3]
    assert item_index(out[3]) == 3
    assert [r for i, r in enumerate(out) if i != 3] == [2 * i for i in range(10) if i != 3]


class SleepAtUnpickle:
    """An item whose unpickling sleeps for ``seconds`` (in ``time.sleep``: nothing of this
    module is needed to unpickle it)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[Any, ...]:
        return (time.sleep, (self.seconds,))


class Tracked:
    """A task's result that says, in the file ``path``, when its worker lets go of it
    (the copy unpickled in the parent has no finalizer: ``__init__`` does not run there)."""

    def __init__(self, x: int, path: str) -> None:
        self.x = x
        weakref.finalize(self, publish, path, "freed")


BAD = 13   # the faulty one of the 40 items below


@pytest.mark.parametrize("max_tasks", [None, 7])
@pytest.mark.parametrize("what", ["raise_at_unpickle", "exit_at_unpickle"])
def test_a_result_the_parent_cannot_unpickle_fails_alone_and_nothing_reruns(
        what: str, max_tasks: int | None) -> None:
    """Results that are not plain data (Decimals) travel in one pickle; when one of them
    cannot be unpickled in the parent (it raises, or raises SystemExit), only its item fails,
    and no task runs twice for it (also on a worker that retires after 7 tasks)."""
    runs = Tally()

    def work(d: decimal.Decimal) -> Any:
        runs.add(int(d))
        return _faults.Fault(what) if d == BAD else d * 2

    items = [decimal.Decimal(i) for i in range(40)]
    out = drain(conveyor.map(work, items, backend="process", workers=2, batch=40,
                             max_tasks_per_worker=max_tasks, on_error="return"), 30)
    assert isinstance(out[BAD], NotPicklable), out[BAD]
    assert item_index(out[BAD]) == BAD
    assert [r for i, r in enumerate(out) if i != BAD] == [2 * d for d in items if d != BAD]
    assert [runs.count(i) for i in range(40)] == [1] * 40


@pytest.mark.parametrize("max_tasks", [None, 7])
@pytest.mark.parametrize("what", ["raise_at_unpickle", "exit_at_unpickle", "os_exit_at_unpickle"])
def test_an_item_a_worker_cannot_unpickle_fails_alone(what: str, max_tasks: int | None) -> None:
    """Items that are not plain data travel in one pickle; when one of them cannot be
    unpickled in the worker, only it fails, the others of its batch come back right. If
    unpickling it raises, no task has run yet: none runs twice. If it kills the worker (each
    time), it fails with WorkerCrashed, and only the items before it run again."""
    runs = Tally()

    def work(d: decimal.Decimal) -> decimal.Decimal:
        runs.add(int(d))
        return d * 2

    items: list[Any] = [decimal.Decimal(i) for i in range(40)]
    items[BAD] = _faults.Fault(what)
    out: list[Any] = drain(conveyor.map(work, items, backend="process", workers=2, batch=40,
                                        max_tasks_per_worker=max_tasks, on_error="return"), 30)
    error = WorkerCrashed if what == "os_exit_at_unpickle" else NotPicklable
    assert isinstance(out[BAD], error), out[BAD]
    assert item_index(out[BAD]) == BAD
    assert [r for i, r in enumerate(out) if i != BAD] == [2 * i for i in range(40) if i != BAD]
    counts = [runs.count(i) for i in range(40)]
    assert counts[BAD] == 0
    if what == "os_exit_at_unpickle":
        assert set(counts[:BAD]) <= {1, 2}, counts   # they ran, then their worker died
        assert counts[BAD + 1:] == [1] * (40 - BAD - 1), counts
    else:
        assert counts[:BAD] + counts[BAD + 1:] == [1] * 39, counts


def test_a_timed_item_whose_unpickling_hangs_times_out_alone() -> None:
    """With timeout=, unpickling an item counts as part of its task: one whose unpickling
    hangs fails with TaskTimeout, and the others of its batch come back right."""
    items: list[Any] = [decimal.Decimal(i) for i in range(8)]
    items[3] = SleepAtUnpickle(30)

    def work(d: Any) -> Any:
        return d * 2

    t0 = time.monotonic()
    out = drain(conveyor.map(work, items, backend="process", workers=2, batch=8, timeout=1,
                             on_error="return"), 20)
    assert isinstance(out[3], TaskTimeout), out[3]
    assert [r for i, r in enumerate(out) if i != 3] == [2 * i for i in range(8) if i != 3]
    assert time.monotonic() - t0 < 15


def test_an_idle_worker_lets_go_of_the_results_it_sent(tmp_path: Path) -> None:
    """A worker does not keep the results of its last batch while it waits for work."""
    paths = [str(tmp_path / f"freed-{i}") for i in range(4)]

    def make(i: int) -> Tracked:
        return Tracked(i, paths[i])

    with conveyor.Pool(backend="process", workers=1) as pool:
        out = drain(pool.map(make, range(4), batch=4))
        assert [r.x for r in out] == [0, 1, 2, 3]
        for path in paths:   # the pool is open: the worker is alive, idle
            assert read_published(Path(path)) == "freed"


# -- 6. cancellation -----------------------------------------------------------------

SIGINT_SCRIPT = textwrap.dedent("""
    import os, time
    import conveyor

    def slow(x):
        time.sleep(5 if x % 3 == 2 else 0.05)
        return os.getpid()

    for pid in conveyor.map(slow, range(10**6), backend="process", workers=2):
        print("result", pid, flush=True)
""")


def test_ctrl_c_stops_a_process_map_and_its_workers(tmp_path: Path) -> None:
    """A real SIGINT to a script running a process map: it exits within 2 s, no worker left."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(SIGINT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    workers: set[int] = set()
    try:
        line = read_line(proc, 20)
        assert line.startswith("result "), line
        workers.add(int(line.split()[1]))
        me = psutil.Process(proc.pid)
        deadline = time.monotonic() + 10
        while len(workers) < 2 and time.monotonic() < deadline:
            workers |= {c.pid for c in me.children(recursive=True)}
            time.sleep(0.01)
        assert len(workers) == 2, workers
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("the script did not exit within 10 s of SIGINT") from None
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 2.0, elapsed
    assert proc.returncode != 0
    assert b"KeyboardInterrupt" in err, err.decode(errors="replace")
    assert not wait_gone(workers, 1.0)


@pytest.mark.parametrize("how", ["break", "raise", "raise_in_with"])
def test_leaving_the_loop_stops_the_workers(how: str) -> None:
    """Breaking out of the loop, or an exception in its body, ends the workers within 2 s."""
    def slow(x: int) -> int:
        time.sleep(5 if x % 2 else 0.02)   # the workers are busy with long tasks
        return os.getpid()

    seen: set[int] = set()

    def consume() -> None:
        if how == "raise_in_with":
            with conveyor.map(slow, range(1000), backend="process", workers=2) as results:
                for pid in results:
                    seen.add(pid)
                    seen.update(worker_pids())
                    raise Boom("the consumer failed")
        for pid in conveyor.map(slow, range(1000), backend="process", workers=2):
            seen.add(pid)
            seen.update(worker_pids())
            if how == "break":
                break
            raise Boom("the consumer failed")

    if how != "break":
        with pytest.raises(Boom):
            consume()
    else:
        consume()
    ended = time.monotonic()
    assert len(seen) == 2, seen
    left = wait_gone(seen, 2.0)
    assert not left, (left, time.monotonic() - ended)


def test_workers_ignore_sigint(tmp_path: Path) -> None:
    """SIGINT sent straight to a worker does not disturb it: its task completes, it stays."""
    gate = Gate()
    pid_file = str(tmp_path / "worker")

    def wait_then_answer(x: int) -> int:
        publish(pid_file, str(os.getpid()))
        if not gate.wait(10):   # SIGINT arrives during this wait (it polls with sleeps)
            raise TimeoutError("the gate never opened")
        return x * 7

    try:
        with conveyor.Pool(backend="process", workers=1) as pool:
            fut = pool.submit(wait_then_answer, 6)
            pid = int(read_published(Path(pid_file)))
            os.kill(pid, signal.SIGINT)
            gate.set()
            assert fut.exception(timeout=10) is None   # e.g. not a KeyboardInterrupt
            assert fut.result() == 42
            assert pool.submit(os.getpid).result(timeout=10) == pid   # the same worker
            assert alive(pid)
    finally:
        gate.set()
    assert not wait_gone({pid})


# -- 7. Pool keeps workers warm ------------------------------------------------------

def test_pool_reuses_the_same_workers_across_maps() -> None:
    """A process Pool starts its workers at once, and the same pids serve two maps."""
    def work(x: int) -> int:
        time.sleep(0.01)
        return os.getpid()

    with conveyor.Pool(backend="process", workers=2) as pool:
        warm = worker_pids()
        assert len(warm) == 2
        first = set(drain(pool.map(work, range(40))))
        second = set(drain(pool.map(work, range(40))))
        assert first <= warm and second <= warm
        assert first | second == warm   # both workers served
        assert worker_pids() == warm    # none was replaced
    assert not wait_gone(warm)


def test_pool_submit_returns_futures() -> None:
    """Pool.submit gives a Future with the call's result, or its exception (with its traceback)."""
    def fail(what: str) -> None:
        raise Boom(what)

    with conveyor.Pool(backend="process", workers=2) as pool:
        workers = worker_pids()
        fut: Future[int] = pool.submit(lambda a, b=0: a * 10 + b, 4, b=2)
        assert isinstance(fut, Future)
        assert fut.result(timeout=10) == 42
        bad = pool.submit(fail, "no luck")
        exc = bad.exception(timeout=10)
        assert type(exc) is Boom and str(exc) == "no luck"
        assert isinstance(exc.__cause__, RemoteTraceback)
        text = str(exc.__cause__)
        assert f'File "{__file__}", line {line_of("raise Boom(what)")}, in fail' in text, text
        assert "raise Boom(what)" in text, text
        with pytest.raises(Boom):
            bad.result()
        assert pool.submit(os.getpid).result(timeout=10) in workers
    assert not wait_gone(workers)


# -- regressions found by review --------------------------------------------------

def _burn_then(x: float) -> float:
    t = time.monotonic()
    while time.monotonic() - t < x:
        pass
    return x


def test_late_steal_replies_leave_the_pool_working() -> None:
    """Steal requests that reach a worker as its batch ends are harmless (many trials)."""
    with conveyor.Pool(backend="process", workers=2) as pool:
        for _ in range(40):   # a long first item: the scheduler asks for the others back
            items = [0.09, 0.0005, 0.0005]
            assert drain(pool.map(_burn_then, iter(items), batch=3)) == items
        assert drain(pool.map(abs, range(-4, 4))) == [abs(i) for i in range(-4, 4)]


MAIN_CLASSES_SCRIPT = textwrap.dedent("""
    import dataclasses, conveyor

    @dataclasses.dataclass
    class Job:
        name: str
        size: int

    def work(job):
        return job.size * 2

    jobs = [Job("a", 1), Job("b", 2), Job("c", 3)]
    print(list(conveyor.map(work, jobs, backend="process", workers=2)))
    with conveyor.Pool(backend="process", workers=1) as pool:
        print(pool.submit(work, Job("d", 5)).result())
""")


def test_items_of_classes_defined_in_main(tmp_path: Path) -> None:
    """Items and submit arguments whose class is defined in __main__ reach the workers."""
    script = tmp_path / "jobs.py"
    script.write_text(MAIN_CLASSES_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[2, 4, 6]", "10"]


def test_sending_big_results_back_is_not_part_of_the_timeout() -> None:
    """A batch's slow hand-over of big results does not count against its last task."""
    def big(x: int) -> bytes:
        return bytes(16 << 20)   # the task takes well under a millisecond

    out = drain(conveyor.map(big, range(6), backend="process", workers=2, batch=6,
                             timeout=0.05, on_error="return"), 30)
    assert [len(r) if isinstance(r, bytes) else r for r in out] == [16 << 20] * 6


def test_a_submitted_call_that_started_cannot_be_cancelled(tmp_path: Path) -> None:
    """Pool.submit on processes: the future is RUNNING once sent, and cancel() then fails."""
    started = tmp_path / "started"
    gate = Gate()

    def slow(path: str) -> str:
        publish(path, "started")
        gate.wait(10)
        return "done"

    with conveyor.Pool(backend="process", workers=1) as pool:
        fut = pool.submit(slow, str(started))
        assert read_published(started) == "started"
        assert fut.running()
        assert not fut.cancel()
        gate.set()
        assert fut.result(timeout=10) == "done"


CLOSE_THEN_CTRL_C = textwrap.dedent("""
    import sys, time, conveyor

    def long_task():
        time.sleep(3600)

    with conveyor.Pool(backend="process", workers=1) as pool:
        pool.submit(long_task)
        print("closing", flush=True)
""")


def test_ctrl_c_while_a_pool_closes_gracefully(tmp_path: Path) -> None:
    """Ctrl-C while Pool.close() waits for a submitted call: the program still exits."""
    script = tmp_path / "close.py"
    script.write_text(CLOSE_THEN_CTRL_C)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    try:
        assert read_line(proc, 20).strip() == "closing"
        workers = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        os.kill(proc.pid, signal.SIGINT)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not wait_gone(workers, 2.0)


SIGPIPE_SCRIPT = textwrap.dedent("""
    import os, signal, psutil, conveyor
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # as many command-line tools do
    with conveyor.Pool(backend="process", workers=2) as pool:
        print(sorted(pool.map(abs, range(-3, 3), batch=1)), flush=True)
        workers = psutil.Process().children()
        for child in workers:
            child.kill()                              # both workers die while idle
        psutil.wait_procs(workers, timeout=5)
        print(sorted(pool.map(abs, range(-3, 3), batch=1)), flush=True)
""")


def test_idle_workers_dying_do_not_kill_a_parent_with_default_sigpipe(tmp_path: Path) -> None:
    """Sending to a dead worker is an error conveyor handles, never a SIGPIPE."""
    script = tmp_path / "sigpipe.py"
    script.write_text(SIGPIPE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.splitlines() == ["[0, 1, 1, 2, 2, 3]"] * 2


# -- 7. the supervisor survives what its callers' callbacks do ------------------------

def _double(x: int) -> int:
    return 2 * x


def test_a_call_whose_worker_dies_before_starting_it_runs_elsewhere() -> None:
    """A submitted call sent to a worker that dies before starting it runs on the next
    worker: its future (RUNNING once sent) is not started twice, and gets the result."""
    with conveyor.Pool(backend="process", workers=1) as pool:
        (pid,) = worker_pids()
        os.kill(pid, signal.SIGSTOP)   # alive, so the call is sent to it; it never reads it
        try:
            fut = pool.submit(_double, 21)
            assert fut.running()
        finally:
            os.kill(pid, signal.SIGKILL)
        assert fut.result(timeout=10) == 42
        assert pool.submit(_double, 4).result(timeout=10) == 8
    assert not wait_gone([pid])


def test_a_raising_completion_callback_does_not_stop_the_supervisor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose sink raises is reported as an uncaught thread exception; the backend's
    supervisor goes on and serves the next batch."""
    from conveyor._backends._base import Batch, Completion
    from conveyor._backends.process import ProcessBackend

    seen: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    got: list[Completion] = []
    done = threading.Event()

    def broken_sink(c: Completion) -> None:
        raise ValueError("a buggy sink")

    def sink(c: Completion) -> None:
        got.append(c)
        done.set()

    backend = ProcessBackend(1)
    backend.start()
    try:
        backend.submit(Batch(_double, [1, 2], broken_sink))
        backend.submit(Batch(_double, [3, 4], sink))
        assert done.wait(10)
        assert got[0].values == [6, 8]
        assert len(seen) == 1 and isinstance(seen[0], ValueError)
    finally:
        backend.close(cancel=True)
