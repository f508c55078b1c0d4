"""backend="process": Ctrl-C and leaving the loop stop a map and its workers
(a real SIGINT to a real interpreter), and the workers ignore SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import conveyor

from ._crossproc import Gate, publish
from ._process_helpers import (
    Boom,
    alive,
    read_line,
    read_published,
    wait_gone,
    worker_pids,
)

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
