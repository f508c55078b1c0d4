"""backend="process": a Pool keeps its workers warm and gives futures, the
regressions review found, and the supervisor surviving its callers' callbacks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import psutil
import pytest

import conveyor
from conveyor.errors import (
    RemoteTraceback,
)

from ._crossproc import Gate, publish
from ._process_helpers import (
    Boom,
    drain,
    line_of,
    read_line,
    read_published,
    wait_gone,
    worker_pids,
)

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
