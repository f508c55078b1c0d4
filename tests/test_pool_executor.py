"""conveyor.Pool as a concurrent.futures.Executor: shutdown, schedule, lifetimes, and
the bugs found by running code written for the stdlib executors (B, E)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError, Executor, Future
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.errors import PoolClosed, TaskTimeout

from ._crossproc import Gate, Tally
from ._process_helpers import read_published
from .conftest import (
    BACKENDS,
    BackendName,
    child_processes,
    conveyor_threads,
    task,
    wait_no_child_processes,
    wait_no_conveyor_threads,
)

LOCAL = [b for b in BACKENDS if b != "dask"]


def run_script(tmp_path: Path, source: str,
               limit: float = 30.0) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=limit, cwd=tmp_path)


def snooze(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_pool_is_an_executor() -> None:
    with conveyor.Pool(workers=2) as pool:
        assert isinstance(pool, Executor)
    assert issubclass(conveyor.ThreadPoolExecutor, conveyor.Pool)
    assert issubclass(conveyor.ProcessPoolExecutor, conveyor.Pool)


@pytest.mark.parametrize("backend", LOCAL)
def test_pool_map_zips_several_iterables_up_to_the_shortest(backend: BackendName) -> None:
    if backend == "asyncio":
        async def add(a: int, b: int, c: int) -> int:
            return a + b + c
        fn: Any = add
    else:
        fn = lambda a, b, c: a + b + c  # noqa: E731 - sent by value to processes
    with conveyor.Pool(backend=backend, workers=2) as pool:
        got = list(pool.map(fn, range(100), range(0, 1000, 10), (1, 2, 3) * 20))
        assert got == [a + b + c for a, b, c in zip(range(100), range(0, 1000, 10),
                                                    (1, 2, 3) * 20, strict=False)]
        gen = (i for i in range(5))   # a generator too, read as the map goes
        assert list(pool.map(fn, gen, [10, 20, 30], [0, 0, 0, 0])) == [10, 21, 32]
    with pytest.raises(TypeError, match="iterable 1"):
        conveyor.Pool(workers=1).map(pow, [1], 5)  # type: ignore[call-overload]


def test_shutdown_waits_for_submitted_calls_and_then_refuses() -> None:
    gate = threading.Event()
    pool = conveyor.Pool(workers=1)
    futs = [pool.submit(lambda i=i: gate.wait(10) and i) for i in range(3)]
    threading.Timer(0.05, gate.set).start()
    pool.shutdown(wait=True)
    assert [f.result(0) for f in futs] == [0, 1, 2]   # done when shutdown returned
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(abs, -1)
    with pytest.raises(PoolClosed):
        pool.map(abs, [1])
    pool.shutdown()   # a second time: nothing to do


def test_shutdown_without_waiting_returns_at_once_and_the_calls_still_finish() -> None:
    gate = threading.Event()
    pool = conveyor.Pool(workers=1)
    futs = [pool.submit(lambda i=i: gate.wait(10) and i) for i in range(3)]
    pool.shutdown(wait=False)
    assert not futs[2].done()
    gate.set()
    assert [f.result(10) for f in futs] == [0, 1, 2]
    assert not wait_no_conveyor_threads()


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_cancel_futures_cancels_only_calls_that_have_not_started(
        backend: BackendName, tmp_path: Path) -> None:
    """Bug E: close(cancel=True) on a process Pool killed the call that was running
    (PoolClosed); as the stdlib's cancel_futures, only pending calls are cancelled."""
    started = tmp_path / "started"
    gate = Gate()

    def slow(path: str) -> str:
        from tests._crossproc import publish

        publish(path, "started")
        gate.wait(20)
        return "finished"

    pool = conveyor.Pool(backend=backend, workers=1)
    running = pool.submit(slow, str(started))
    queued = [pool.submit(abs, -i) for i in range(5)]
    assert read_published(started) == "started"
    closer = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True})
    closer.start()
    for f in queued:
        with pytest.raises(CancelledError):
            f.result(10)
    assert not running.done()
    gate.set()
    assert running.result(10) == "finished"
    closer.join(10)
    assert not closer.is_alive()


def test_a_rejected_submit_does_not_deadlock_and_submit_at_exit_raises(tmp_path: Path) -> None:
    """Bug B: once a process Pool's backend had closed (at interpreter exit), submit
    deadlocked on the pool's lock, and an atexit handler that submitted kept the
    interpreter from ever exiting. Now pending work runs at exit and submit raises."""
    out = run_script(tmp_path, """
        import atexit, time, conveyor

        pool = None

        def late():
            try:
                pool.submit(abs, -1)
            except RuntimeError as exc:
                print("refused:", exc, flush=True)

        def pending():
            time.sleep(0.3)
            print("pending call ran", flush=True)

        # Registered before the process backend's own exit handler: it runs
        # after that one has closed the backend (the order that deadlocked).
        atexit.register(late)
        pool = conveyor.Pool(backend="process", workers=1)
        print(pool.submit(abs, -3).result(10), flush=True)
        pool.submit(pending)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "3", "pending call ran",
        "refused: conveyor.Pool.submit: cannot schedule new futures after interpreter shutdown"]


@pytest.mark.parametrize("backend", LOCAL)
def test_schedule_times_out_one_call(backend: BackendName) -> None:
    if backend == "asyncio":
        import asyncio

        async def nap(s: float) -> float:
            await asyncio.sleep(s)
            return s
        fn: Any = nap
    elif backend == "thread":   # a thread call is abandoned: let it end after the test
        stop = threading.Event()
        fn = lambda s: stop.wait(s) and s  # noqa: E731
    else:
        fn = snooze
    with conveyor.Pool(backend=backend, workers=2) as pool:
        slow = pool.schedule(fn, (30,), timeout=0.3)
        quick = pool.schedule(fn, (0.01,), timeout=10)
        t0 = time.monotonic()
        with pytest.raises(TaskTimeout, match=r"timeout=0\.3"):
            slow.result(15)
        assert time.monotonic() - t0 < 10
        quick.result(10)
        assert pool.submit(task(backend, abs), -4).result(10) == 4
        if backend == "thread":
            stop.set()


@pytest.mark.parametrize("backend", LOCAL)
def test_schedule_retries_a_failing_call(backend: BackendName) -> None:
    tally = Tally()

    def flaky(key: str) -> str:
        if tally.add(key) < 3:
            raise ConnectionError(f"attempt of {key} failed")
        return key

    fn = task(backend, flaky)
    with conveyor.Pool(backend=backend, workers=2) as pool:
        assert pool.schedule(fn, ("a",), retries=2, backoff=0.01).result(20) == "a"
        assert tally.count("a") == 3
        fut = pool.schedule(fn, ("b",), retries=1, backoff=0.01)
        with pytest.raises(ConnectionError, match="attempt of b"):
            fut.result(20)
        assert tally.count("b") == 2
        # Not retried: an error that retry_on does not match.
        fut = pool.schedule(fn, ("c",), retries=5, retry_on=KeyError, backoff=0.01)
        with pytest.raises(ConnectionError):
            fut.result(20)
        assert tally.count("c") == 1


def test_schedule_checks_its_options() -> None:
    with conveyor.Pool(workers=1) as pool:
        with pytest.raises(ValueError, match="timeout"):
            pool.schedule(abs, (1,), timeout=0)
        with pytest.raises(ValueError, match="retries"):
            pool.schedule(abs, (1,), retries=-1)
        with pytest.raises(TypeError, match="args"):
            pool.schedule(abs, "x")
        with pytest.raises(TypeError, match="kwargs"):
            pool.schedule(abs, (1,), [("a", 1)])  # type: ignore[arg-type]


def test_sequential_calls_use_one_thread() -> None:
    with conveyor.Pool(workers=8) as pool:
        before = set(conveyor_threads())
        for i in range(3):
            assert pool.submit(pow, 2, i).result(10) == 2 ** i
        started = set(conveyor_threads()) - before
        assert len(started) == 1, [t.name for t in started]


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_dropped_pool_finishes_its_calls_and_releases_its_workers(
        backend: BackendName) -> None:
    tally = Tally()
    pool = conveyor.Pool(backend=backend, workers=2)
    futs = [pool.submit(tally.add, i) for i in range(10)]
    del pool
    gc.collect()
    assert [f.result(10) for f in futs] == [1] * 10
    assert not wait_no_conveyor_threads()
    assert not wait_no_child_processes()


def test_a_map_keeps_its_pool_alive() -> None:
    got = list(conveyor.Pool(workers=2).map(abs, range(-2000, 0)))
    assert got == list(range(2000, 0, -1))
    gc.collect()
    assert not wait_no_conveyor_threads()


def test_the_future_of_a_finished_call_does_not_hold_its_arguments() -> None:
    import weakref

    class Payload:
        pass

    with conveyor.Pool(workers=1) as pool:
        payload = Payload()
        ref = weakref.ref(payload)
        fut: Future[int] = pool.submit(lambda p: 1, payload)
        assert fut.result(10) == 1
        del payload
        gc.collect()
        assert ref() is None


def test_ctrl_c_in_a_with_block_does_not_wait_for_a_process_call(tmp_path: Path) -> None:
    out = run_script(tmp_path, """
        import os, signal, threading, time, conveyor

        with conveyor.Pool(backend="process", workers=1) as pool:
            fut = pool.submit(time.sleep, 3600)
            deadline = time.monotonic() + 10
            while not fut.running() and time.monotonic() < deadline:
                time.sleep(0.01)
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
            fut.result()
    """)
    assert out.returncode != 0
    assert "KeyboardInterrupt" in out.stderr
    assert not child_processes()


class Payload:
    """An object whose lifetime a test follows with a weak reference."""


def make_payload(_i: int) -> Payload:
    return Payload()


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_pool_does_not_keep_the_functions_it_ran_alive(backend: BackendName) -> None:
    import weakref

    def double(x: int, y: int = 0) -> int:
        return 2 * (x + y)

    ref = weakref.ref(double)
    with conveyor.Pool(backend=backend, workers=2) as pool:
        assert list(pool.map(double, range(50))) == [2 * x for x in range(50)]
        assert list(pool.map(double, range(3), range(3))) == [0, 4, 8]
        assert pool.submit(double, 4).result(10) == 8
        assert pool.schedule(double, (5,), timeout=10).result(10) == 10
        del double
        # A worker thread lets go of its last batch just after it reported it.
        deadline = time.monotonic() + 10
        while gc.collect() is not None and ref() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ref() is None


def test_a_map_does_not_keep_the_results_it_handed_out() -> None:
    import weakref

    with conveyor.Pool(workers=2) as pool:
        results = pool.map(make_payload, range(2000), window=64)
        refs = []
        for _ in range(1000):
            refs.append(weakref.ref(next(results)))
        gc.collect()
        assert sum(r() is not None for r in refs) == 0
        assert sum(1 for _ in results) == 1000
