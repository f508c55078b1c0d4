"""Executors under test and workloads for the executor-contract tests.

The workloads are module-level so worker processes import them by name; they
synchronise through :class:`Gate` and :class:`Tally` (files), which work the
same on threads and in worker processes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

import conveyor

from ._crossproc import Gate, Tally

T = TypeVar("T")

#: the stdlib's drop-in classes: every contract case, the eager map included
KINDS = ["ThreadPoolExecutor", "ProcessPoolExecutor"]
#: plus conveyor.Pool, for what the Executor base class promises (not the eager map)
ALL_KINDS = [*KINDS, "Pool-thread", "Pool-process"]
#: the kinds whose calls run in worker processes
PROCESS_KINDS = ["ProcessPoolExecutor", "Pool-process"]

#: how long a workload waits for a gate at most (the test fails well before)
LIMIT = 20.0


def make(kind: str, workers: int, **options: Any) -> Executor:
    """An executor of ``kind`` with ``workers`` workers; ``options`` as the stdlib names them."""
    if kind == "ThreadPoolExecutor":
        return conveyor.ThreadPoolExecutor(workers, **options)
    if kind == "ProcessPoolExecutor":
        return conveyor.ProcessPoolExecutor(workers, **options)
    backend = kind.removeprefix("Pool-")
    assert backend in ("thread", "process"), kind
    return conveyor.Pool(backend, workers, **options)


def make_stdlib(kind: str, workers: int,
                **options: Any) -> conveyor.ThreadPoolExecutor | conveyor.ProcessPoolExecutor:
    """One of the drop-in classes (``kind`` in KINDS): the stdlib's eager ``map``."""
    ex = make(kind, workers, **options)
    assert isinstance(ex, (conveyor.ThreadPoolExecutor, conveyor.ProcessPoolExecutor)), kind
    return ex


def wait_until(predicate: Callable[[], bool], limit: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``limit`` seconds pass; whether it held."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def started(tally: Tally, key: object, count: int = 1, limit: float = 10.0) -> bool:
    """Wait until ``key`` was added to ``tally`` ``count`` times (a call started)."""
    return wait_until(lambda: tally.count(key) >= count, limit)


# -- workloads (run on worker threads or in worker processes) -------------------
def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def raise_value_error(text: str) -> None:
    raise ValueError(text)   # the line a traceback must show


def gated(gate: Gate, value: T) -> T:
    """Return ``value`` once ``gate`` opens (or after LIMIT seconds)."""
    gate.wait(LIMIT)
    return value


def record(tally: Tally, key: object, value: T) -> T:
    """Note that the call ran, return ``value``."""
    tally.add(key)
    return value


def record_then_wait(tally: Tally, key: object, gate: Gate, value: T) -> T:
    """Note that the call started, then return ``value`` once ``gate`` opens."""
    tally.add(key)
    gate.wait(LIMIT)
    return value


def rendezvous(tally: Tally, key: object, parties: int) -> int:
    """A barrier across processes: return once ``parties`` calls have arrived (or raise)."""
    tally.add(key)
    if not wait_until(lambda: tally.count(key) >= parties, LIMIT):
        raise TimeoutError(f"only {tally.count(key)} of {parties} calls ran at once")
    return os.getpid()


def sleep_then(seconds: float, value: T) -> T:
    """A call that takes ``seconds`` (a workload, not synchronisation)."""
    time.sleep(seconds)
    return value


def record_divmod(tally: Tally, a: int, b: int) -> tuple[int, int]:
    """``divmod(a, b)``, noting first that the call ran."""
    tally.add((a, b))
    return divmod(a, b)


def worker_name() -> str:
    return threading.current_thread().name


def who() -> tuple[int, int]:
    """Which worker runs this call: (process, thread)."""
    return os.getpid(), threading.get_ident()


def pid_of(_: object = None) -> int:
    return os.getpid()


def exit_now(code: int) -> None:
    os._exit(code)


def exit_if(x: int, bad: int, code: int = 3) -> int:
    """``x``, except that the worker process dies on ``bad``."""
    if x == bad:
        os._exit(code)
    return x


_init_state = "uninitialized"


def init_state(*values: object) -> None:
    global _init_state
    _init_state = ":".join(str(v) for v in values)


def get_init_state(_: object = None) -> str:
    return _init_state


def init_fails() -> None:
    raise ValueError("error in initializer")


class Thing:
    """An object whose collection a test watches (a weakref)."""

    def method(self) -> None:
        return None


def make_thing(_: object) -> Thing:
    return Thing()


def done_futures(futures: list[Future[Any]]) -> bool:
    return all(f.done() for f in futures)
