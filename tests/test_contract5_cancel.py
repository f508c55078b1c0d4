"""Contract 5: early exit, close(), an exception in the caller and Ctrl-C stop the run."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import conveyor

from .conftest import BackendName, Sleepers, conveyor_threads, task, wait_no_conveyor_threads


def started_counter(backend: BackendName) -> tuple[list[int], Callable[[Any], Any]]:
    started: list[int] = []

    def note(x: int) -> int:
        started.append(x)
        return x

    return started, task(backend, note)


def test_break_stops_new_work(backend: BackendName) -> None:
    started, fn = started_counter(backend)
    for i, _ in enumerate(conveyor.map(fn, itertools.count(), backend=backend,
                                       window=64)):
        if i == 100:
            break
    assert not wait_no_conveyor_threads()
    n = len(started)
    assert n <= 100 + 64 + 1
    assert len(started) == n   # nothing more runs after the loop was left


def test_close_is_prompt_and_final(backend: BackendName) -> None:
    started, fn = started_counter(backend)
    results = conveyor.map(fn, itertools.count(), backend=backend,
                           window=32)
    next(iter(results))
    t0 = time.monotonic()
    results.close()
    assert time.monotonic() - t0 < 2
    assert not conveyor_threads()
    with pytest.raises(conveyor.errors.ResultsConsumed, match="closed"):
        list(results)   # a closed Results hands out nothing more, and says so
    n = len(started)
    assert n <= 1 + 32 + 1


def test_exception_in_caller_with_block(backend: BackendName) -> None:
    _started, fn = started_counter(backend)
    with pytest.raises(ZeroDivisionError), \
            conveyor.map(fn, itertools.count(), backend=backend,
                         window=16) as results:
        for r in results:
            if r == 10:
                1 / 0  # noqa: B018
    assert not conveyor_threads()


def test_close_returns_after_the_inputs_cleanup_ran() -> None:
    """A generator input stopped early is closed in the input thread, and
    ``close()`` returns once that has happened: its ``finally`` has run and no
    conveyor thread is left, even when the cleanup takes a while."""
    cleaned = threading.Event()

    def items() -> Any:
        try:
            yield from itertools.count()
        finally:
            time.sleep(0.05)   # a cleanup that takes time (closing a cursor, a file)
            cleaned.set()

    results = conveyor.map(abs, items(), window=16)
    assert next(results) == 0
    results.close()
    assert cleaned.is_set()
    assert not conveyor_threads()


def test_close_cancels_running_coroutines() -> None:
    sleepers = Sleepers(10)
    results = conveyor.map(sleepers.fn(), range(10), workers=10, backend="asyncio")
    assert sleepers.all_started.wait(10)
    t0 = time.monotonic()
    results.close()
    assert time.monotonic() - t0 < 2
    assert sorted(sleepers.cancelled) == list(range(10))


def test_pending_work_dropped_running_thread_call_finishes() -> None:
    """A thread call running when the run is closed is waited for; queued ones never start."""
    entered = threading.Event()
    release = threading.Event()
    started = []

    def work(x: int) -> int:
        started.append(x)
        if x == 0:
            entered.set()
            release.wait(10)
        return x

    results = conveyor.map(work, range(1000), workers=1, batch=1, window=50)
    assert entered.wait(10)
    closer = threading.Thread(target=results.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()      # waiting for the running call
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert started == [0]


SIGINT_SCRIPT = textwrap.dedent("""
    import asyncio, sys, threading, time
    import conveyor

    backend = sys.argv[1]
    started = threading.Event()   # the parent signals once the work has begun
    if backend == "asyncio":
        async def work(x):
            started.set()
            await asyncio.sleep(60)
    else:
        def work(x):
            started.set()
            time.sleep(5 if x % 50 == 0 else 0.05)   # some calls run long

    def announce():
        started.wait(10)
        print("ready", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        if sys.argv[2] == "with":
            with conveyor.map(work, range(10**9), backend=backend, workers=8) as results:
                for _ in results:
                    pass
        else:
            for _ in conveyor.map(work, range(10**9), backend=backend, workers=8):
                pass
    except KeyboardInterrupt:
        left = [t.name for t in threading.enumerate() if t.name.startswith("conveyor-")
                and t.name != "conveyor-scheduler" and backend == "asyncio"]
        print("interrupted", left, flush=True)
        sys.exit(3)
""")


@pytest.mark.parametrize("backend", ["thread", "asyncio"])
@pytest.mark.parametrize("style", ["for", "with"])
def test_ctrl_c_returns_promptly(backend: BackendName, style: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, backend, style],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"   # tasks are running
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, (out, err)
    assert "interrupted" in out
    assert elapsed < 2.0
