"""Helpers that work inside worker processes too (imported there: keep it light)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import weakref
from typing import Any


class Gate:
    """A ``threading.Event`` that tasks in worker processes can wait on too.

    Setting it also creates a file; a copy of the gate unpickled in another
    process waits for that file to appear.
    """

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="conveyor-test-gate-")
        os.close(fd)
        os.unlink(self.path)
        self._event: threading.Event | None = threading.Event()
        weakref.finalize(self, _remove, self.path)

    def set(self) -> None:
        with open(self.path, "w"):
            pass
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        return os.path.exists(self.path)

    def wait(self, limit: float) -> bool:
        if self._event is not None:
            return self._event.wait(limit)
        deadline = time.monotonic() + limit
        while not os.path.exists(self.path):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_event": None}


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class Tally:
    """A log of task calls that worker processes can write to too.

    ``add(key)`` appends a line (one ``O_APPEND`` write: lines from several
    processes never mix) and returns how many times ``key`` has been added,
    this call included. ``stamps(key)`` gives the ``time.monotonic()`` of each
    call (the clock is system-wide, so times from workers compare).
    """

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="conveyor-test-tally-")
        os.close(fd)
        weakref.finalize(self, _remove, self.path)

    def add(self, key: object) -> int:
        with open(self.path, "a") as f:
            f.write(f"{key!r} {time.monotonic()!r}\n")
        return self.count(key)

    def _entries(self) -> list[tuple[str, float]]:
        with open(self.path) as f:
            return [(k, float(t)) for k, t in (line.rsplit(" ", 1) for line in f)]

    def count(self, key: object) -> int:
        k = repr(key)
        return sum(1 for e in self._entries() if e[0] == k)

    def stamps(self, key: object = None) -> list[float]:
        k = repr(key)
        return [t for e, t in self._entries() if key is None or e == k]

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}


def publish(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader sees all of it or no file)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
