"""The stdlib's executor contract: shutdown, lifetimes, interpreter exit, dead workers.

``concurrent.futures`` documentation, ``Executor.shutdown``: "Signal the
executor that it should free any resources that it is using when the
currently pending futures are done executing. Calls to Executor.submit()
and Executor.map() made after shutdown will raise RuntimeError. If wait is
True then this method will not return until all the pending futures are
done executing [...]. If wait is False then this method will return
immediately [...]. Regardless of the value of wait, the entire Python
program will not exit until all pending futures are done executing. If
cancel_futures is True, this method will cancel all pending futures that
the executor has not started running. Any futures that are completed or
running won't be cancelled". Cases from CPython's ``test_shutdown.py`` and
``test_process_pool.py`` besides.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures import BrokenExecutor, CancelledError
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

import conveyor
from conveyor.errors import WorkerCrashed

from ._crossproc import Gate, Tally
from ._executor_util import (
    ALL_KINDS,
    KINDS,
    PROCESS_KINDS,
    Thing,
    exit_if,
    exit_now,
    gated,
    make,
    pid_of,
    record,
    record_then_wait,
    sleep_then,
    started,
    wait_until,
)
from .conftest import wait_no_child_processes, wait_no_conveyor_threads


def assert_workers_gone() -> None:
    assert not wait_no_conveyor_threads(), "worker threads still running"
    assert not wait_no_child_processes(), "worker processes still running"


# -- shutdown ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_shutdown_wait_waits_for_the_pending_calls(kind: str) -> None:
    """test_shutdown.py test_hang_issue12364: pending calls run, then shutdown returns."""
    ex = make(kind, 2)
    futs = [ex.submit(sleep_then, 0.02, i) for i in range(12)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futs)
    assert [f.result(0) for f in futs] == list(range(12))
    assert_workers_gone()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_shutdown_without_wait_returns_at_once_and_the_work_completes(kind: str) -> None:
    """test_shutdown.py test_shutdown_no_wait: the running call and the pending ones
    still complete, and the workers exit after them."""
    gate = Gate()
    ex = make(kind, 1)
    try:
        running = ex.submit(gated, gate, "running")
        pending = [ex.submit(pow, 2, i) for i in range(3)]
        t0 = time.monotonic()
        ex.shutdown(wait=False)
        assert time.monotonic() - t0 < 5
        assert not running.done()      # shutdown did not wait for it: it waits for the gate
        with pytest.raises(RuntimeError):
            ex.submit(pow, 2, 2)
    finally:
        gate.set()
    assert running.result(20) == "running"
    assert [f.result(20) for f in pending] == [1, 2, 4]
    assert_workers_gone()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_shutdown_cancel_futures_cancels_only_what_has_not_started(kind: str) -> None:
    """test_shutdown.py test_cancel_futures, with ``wait=False``."""
    gate, tally = Gate(), Tally()
    ex = make(kind, 1)
    try:
        running = ex.submit(record_then_wait, tally, "running", gate, "running")
        assert started(tally, "running")
        pending = [ex.submit(record, tally, "pending", i) for i in range(5)]
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in pending)
        assert not running.cancelled()
    finally:
        gate.set()
    assert running.result(20) == "running"
    for f in pending:
        with pytest.raises(CancelledError):
            f.result(0)
    assert_workers_gone()
    assert tally.count("pending") == 0


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_shutdown_wait_and_cancel_futures_completes_the_running_call(kind: str) -> None:
    """"If both cancel_futures and wait are True, all futures that the executor has
    started running will be completed prior to this method returning. The remaining
    futures are cancelled." The gate opens once the pending calls are cancelled."""
    gate, tally = Gate(), Tally()
    ex = make(kind, 1)
    running = ex.submit(record_then_wait, tally, "running", gate, "running")
    assert started(tally, "running")
    pending = [ex.submit(record, tally, "pending", i) for i in range(5)]

    def open_gate_once_cancelled() -> None:
        try:
            wait_until(lambda: all(f.cancelled() for f in pending))
        finally:
            gate.set()

    opener = threading.Thread(target=open_gate_once_cancelled)
    opener.start()
    try:
        ex.shutdown(wait=True, cancel_futures=True)
        assert running.done()
        assert running.result(0) == "running"
        assert all(f.cancelled() for f in pending)
    finally:
        gate.set()
        opener.join(20)
    assert tally.count("pending") == 0


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_shutdown_twice_then_submit_and_map_raise_runtime_error(kind: str) -> None:
    """test_run_after_shutdown; shutdown "is safe to call several times"."""
    ex = make(kind, 1)
    assert ex.submit(pow, 2, 5).result(20) == 32
    ex.shutdown(wait=True)
    ex.shutdown(wait=True)
    ex.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="cannot schedule new futures"):
        ex.submit(pow, 2, 5)
    with pytest.raises(RuntimeError):
        ex.map(abs, range(3))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_with_block_returns_the_executor_and_waits_for_its_calls(kind: str) -> None:
    """"You can avoid having to call this method explicitly if you use the executor as
    a context manager via the with statement, which will shutdown the Executor
    (waiting as if Executor.shutdown() were called with wait set to True)"."""
    ex = make(kind, 2)
    with ex as entered:
        assert entered is ex
        futs = [ex.submit(sleep_then, 0.02, i) for i in range(6)]
    assert [f.result(0) for f in futs] == list(range(6))
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 5)
    assert_workers_gone()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_shutdown_after_a_cancelled_submit_does_not_hang(kind: str) -> None:
    """test_shutdown.py test_hang_gh94440."""
    ex = make(kind, 1)
    assert ex.submit(int).result(20) == 0
    ex.submit(int).cancel()
    ex.shutdown(wait=True)
    assert_workers_gone()


# -- interpreter exit -------------------------------------------------------------
CONSTRUCT = {
    "ThreadPoolExecutor": "conveyor.ThreadPoolExecutor(2)",
    "ProcessPoolExecutor": "conveyor.ProcessPoolExecutor(2)",
    "Pool-thread": "conveyor.Pool('thread', 2)",
    "Pool-process": "conveyor.Pool('process', 2)",
}

SCRIPT = """
import atexit
import time

import conveyor

def sleep_and_print(seconds, text):
    time.sleep(seconds)
    print(text, flush=True)

if __name__ == "__main__":
    ex = {construct}
{body}
"""


def run_script(tmp_path: Path, kind: str, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(construct=CONSTRUCT[kind],
                                    body=textwrap.indent(textwrap.dedent(body), "    ")))
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=40)


@pytest.mark.parametrize("then", ["", "ex.shutdown(wait=False)"],
                         ids=["no-shutdown", "shutdown-without-wait"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_pending_work_runs_at_interpreter_exit(kind: str, then: str, tmp_path: Path) -> None:
    """test_shutdown.py test_interpreter_shutdown (no shutdown) and test_hang_gh83386
    (``shutdown(wait=False)``; the stdlib skips that one for its process pool, which
    hangs there): the script ends, the call still runs to its end, the interpreter
    then exits."""
    proc = run_script(tmp_path, kind, f"""
        ex.submit(sleep_and_print, 0.5, "apple")
        {then}
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.strip() == "apple"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_submit_from_an_atexit_handler_raises_runtime_error(kind: str,
                                                           tmp_path: Path) -> None:
    """test_shutdown.py test_submit_after_interpreter_shutdown."""
    proc = run_script(tmp_path, kind, """
        assert ex.submit(abs, -42).result(20) == 42

        @atexit.register
        def run_last():
            try:
                ex.submit(id, None)
            except RuntimeError:
                print("runtime-error", flush=True)
                raise
    """)
    assert proc.returncode == 0, proc.stderr   # an atexit handler's error does not change it
    assert proc.stdout.strip() == "runtime-error"
    assert "cannot schedule new futures after interpreter shutdown" in proc.stderr


# -- dropped executors ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_dropped_executor_finishes_its_calls_and_its_workers_exit(kind: str) -> None:
    """As a stdlib executor dropped without shutdown: its calls complete, then its
    threads or processes exit."""
    gate = Gate()
    ex = make(kind, 2)
    futs = [ex.submit(gated, gate, i) for i in range(4)]
    del ex
    gc.collect()
    gate.set()
    assert [f.result(20) for f in futs] == list(range(4))
    assert_workers_gone()


@pytest.mark.parametrize("kind", KINDS)
def test_a_dropped_executor_still_gives_its_map_results(kind: str) -> None:
    """test_shutdown.py test_del_shutdown."""
    ex = make(kind, 2)
    results = ex.map(abs, range(-5, 5), timeout=20)   # a failure, not a hang
    del ex
    gc.collect()
    assert list(results) == [abs(v) for v in range(-5, 5)]
    del results
    gc.collect()
    assert_workers_gone()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_no_stale_reference_to_a_submitted_callable(kind: str) -> None:
    """executor.py test_no_stale_references: once its call ended, the executor keeps
    nothing of a submitted callable (the future deliberately discarded)."""
    collected = threading.Event()
    with make(kind, 1) as ex:
        thing = Thing()
        ref = weakref.ref(thing, lambda _: collected.set())
        ex.submit(thing.method)
        del thing
        assert wait_until(lambda: (gc.collect(), collected.is_set())[1], 10), \
            "the callable was still referenced after its call"
        assert ref() is None


# -- dead process workers -------------------------------------------------------------
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_a_crashed_worker_fails_only_its_call(kind: str) -> None:
    """test_process_pool.py test_killed_child: in the stdlib a worker that dies breaks
    the whole pool: every pending future fails with BrokenProcessPool and later
    submits raise it. By design conveyor fails only the call that was running with
    WorkerCrashed (a BrokenProcessPool, so ``except BrokenProcessPool`` still
    catches it), replaces the worker, and the other and later calls succeed."""
    gate, tally = Gate(), Tally()
    with make(kind, 2) as ex:
        other = ex.submit(record_then_wait, tally, "other", gate, "other")
        assert started(tally, "other")
        crashed = ex.submit(exit_now, 3)
        with pytest.raises(BrokenProcessPool) as info:
            crashed.result(20)
        assert isinstance(info.value, WorkerCrashed)
        assert isinstance(info.value, BrokenExecutor)
        assert info.value.exitcode == 3
        gate.set()
        assert other.result(20) == "other"
        assert ex.submit(pow, 2, 8).result(20) == 256
        assert [f.result(20) for f in [ex.submit(pow, 2, i) for i in range(4)]] == [1, 2, 4, 8]


def test_a_crash_in_map_is_raised_at_its_position() -> None:
    with make("ProcessPoolExecutor", 2) as ex:
        it = ex.map(exit_if, range(5), [2] * 5)
        assert next(it) == 0
        assert next(it) == 1
        with pytest.raises(BrokenProcessPool):
            next(it)
        # the pool goes on (the stdlib's would be broken); timeout: a failure, not a hang
        assert list(ex.map(abs, range(-3, 3), timeout=20)) == [3, 2, 1, 0, 1, 2]


# -- max_tasks_per_child --------------------------------------------------------------
def test_max_tasks_per_child_replaces_the_worker_after_that_many_calls() -> None:
    """test_process_pool.py test_max_tasks_per_child."""
    with conveyor.ProcessPoolExecutor(1, max_tasks_per_child=3) as ex:
        pids = [ex.submit(pid_of).result(20) for _ in range(4)]
    assert pids[0] == pids[1] == pids[2]
    assert pids[3] != pids[0]


def test_max_tasks_per_child_one_means_a_new_process_each_call() -> None:
    with conveyor.ProcessPoolExecutor(1, max_tasks_per_child=1) as ex:
        pids = [ex.submit(pid_of).result(20) for _ in range(4)]
    assert len(set(pids)) == 4
    assert os.getpid() not in pids


@pytest.mark.parametrize(("workers", "tasks", "calls"), [(1, 2, 6), (2, 2, 8)])
def test_max_tasks_per_child_with_a_backlog(workers: int, tasks: int, calls: int) -> None:
    """test_process_pool.py test_max_tasks_per_child_pending_tasks_gh115634: calls
    queued while workers reach their limit still run."""
    with conveyor.ProcessPoolExecutor(workers, max_tasks_per_child=tasks) as ex:
        futs = [ex.submit(pow, 2, i) for i in range(calls)]
        assert [f.result(30) for f in futs] == [2**i for i in range(calls)]


@pytest.mark.parametrize("value", [0, -1])
def test_max_tasks_per_child_must_be_positive(value: int) -> None:
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        conveyor.ProcessPoolExecutor(1, max_tasks_per_child=value)
