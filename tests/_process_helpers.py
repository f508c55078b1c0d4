"""Helpers of the process backend's tests (``tests/test_process*.py``): the
exceptions their tasks raise (module level: they are pickled by reference),
waiting for processes to end, and draining a map with a time limit."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import psutil

from .conftest import child_processes

# -- exceptions raised in worker processes (pickled by reference: module level) --


class Boom(Exception):
    """A task's own exception type, defined in the tests (not a builtin one)."""


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
    """The number of the (one) line of the calling test module that is ``text``
    (indentation aside)."""
    caller = sys._getframe(1).f_code.co_filename
    lines = [i for i, line in enumerate(Path(caller).read_text().splitlines(), 1)
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
