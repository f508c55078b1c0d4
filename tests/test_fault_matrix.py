"""Fault injection: every way a pickle can fail, wherever it sits, on process and dask.

As CPython's ``test_concurrent_futures/test_deadlock.py`` does for
``ProcessPoolExecutor``, each cell puts one fault (``tests/_faults.py``) in one
place, gives the work in one way, and checks the contract in :data:`EXPECTED`:

* the affected call or item ends, within the cell's bound, with the documented
  error (its type, and a fragment of its message or of its cause's);
* with ``scope="item"`` the other items of its batch come back right; with
  ``scope="all"`` (a fault in the function or in an initializer argument)
  every call fails that way, fast;
* the pool then answers 100 more calls (each fails the same way where the
  fault is in the initializer, since every worker runs it);
* no process is left behind.

A class defined in ``__main__`` (a script, a notebook) is the one fault that
needs a real ``__main__``: those cells run :func:`run_cell` in a script.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import conveyor
from conveyor.errors import NotPicklable, WorkerCrashed, WorkerInitError, item_index

from .conftest import HAS_DASK, dask_session_client, wait_no_child_processes

if HAS_DASK:
    # Before the fault classes exist: importing distributed installs tblib's
    # pickling of exceptions on every exception class defined by then, which
    # rebuilds some of them (an unrebuildable one among them), so a cell's
    # fault would depend on which test file imported distributed first.
    import distributed  # noqa: F401

from . import _faults

ROOT = Path(__file__).resolve().parent.parent
N_ITEMS = 40          # pool.map's items, in one batch ...
BAD = 20              # ... and the faulty one, in the middle
LATER_CALLS = 100     # calls the pool must answer after the fault


class Expect(NamedTuple):
    """What the affected call(s) end with, and within how long (seconds)."""

    error: type[BaseException]
    fragment: str    # in str(error) or str(error.__cause__)
    scope: str       # "item": only it fails; "all": every call; "refused": at once, by the API
    bound: float


def _cell(error: type[BaseException], fragment: str, scope: str = "item",
          bound: float = 15.0) -> Expect:
    return Expect(error, fragment, scope, bound)


CRASHED_3 = "exited with code 3"
SEGV = "SIGSEGV"

#: The contract, cell by cell: (where the fault is, what it is) -> the outcome.
#: Not generated (see ``cells``): a result that calls os._exit or segfaults
#: while the *parent* unpickles it would kill the test process itself.
EXPECTED: dict[tuple[str, str], Expect] = {
    # The function holds the faulty object: it reaches no worker intact.
    ("function", "raise_at_pickle"): _cell(NotPicklable, "FaultError", "refused"),
    ("function", "raise_at_unpickle"): _cell(NotPicklable, "FaultError", "all"),
    ("function", "exit_at_unpickle"): _cell(NotPicklable, "SystemExit", "all"),
    ("function", "os_exit_at_unpickle"): _cell(WorkerCrashed, CRASHED_3, "all"),
    ("function", "segfault_at_unpickle"): _cell(WorkerCrashed, SEGV, "all"),
    ("function", "frozen"): _cell(NotPicklable, "FrozenInstanceError", "all"),
    ("function", "unrebuildable"): _cell(NotPicklable, "UnrebuildableError", "all"),
    ("function", "main"): _cell(NotPicklable, "MainError", "all"),
    # One item (or the submitted argument) is faulty.
    ("item", "raise_at_pickle"): _cell(NotPicklable, "FaultError"),
    ("item", "raise_at_unpickle"): _cell(NotPicklable, "FaultError"),
    ("item", "exit_at_unpickle"): _cell(NotPicklable, "SystemExit"),
    ("item", "os_exit_at_unpickle"): _cell(WorkerCrashed, CRASHED_3),
    ("item", "segfault_at_unpickle"): _cell(WorkerCrashed, SEGV),
    ("item", "frozen"): _cell(NotPicklable, "FrozenInstanceError"),
    ("item", "unrebuildable"): _cell(NotPicklable, "UnrebuildableError"),
    ("item", "main"): _cell(NotPicklable, "MainError"),
    # The initializer's argument is faulty: every worker fails to start serving.
    ("initarg", "raise_at_pickle"): _cell(NotPicklable, "FaultError", "refused"),
    ("initarg", "raise_at_unpickle"): _cell(WorkerInitError, "FaultError", "all"),
    ("initarg", "exit_at_unpickle"): _cell(WorkerInitError, "SystemExit", "all"),
    ("initarg", "os_exit_at_unpickle"): _cell(WorkerInitError, CRASHED_3, "all", 30.0),
    ("initarg", "segfault_at_unpickle"): _cell(WorkerInitError, SEGV, "all", 30.0),
    ("initarg", "frozen"): _cell(WorkerInitError, "FrozenInstanceError", "all"),
    ("initarg", "unrebuildable"): _cell(WorkerInitError, "UnrebuildableError", "all"),
    ("initarg", "main"): _cell(WorkerInitError, "MainError", "all"),
    # One task returns the faulty object.
    ("result", "raise_at_pickle"): _cell(NotPicklable, "FaultError"),
    ("result", "raise_at_unpickle"): _cell(NotPicklable, "FaultError"),
    ("result", "exit_at_unpickle"): _cell(NotPicklable, "SystemExit"),
    ("result", "frozen"): _cell(NotPicklable, "FrozenInstanceError"),
    ("result", "unrebuildable"): _cell(NotPicklable, "UnrebuildableError"),
    ("result", "main"): _cell(NotPicklable, "MainError"),
    # One task raises the faulty exception: it cannot come back as itself, so a
    # NotPicklable naming it stands in (with the worker-side traceback), unless
    # rebuilding it kills the worker that checks it.
    ("raised", "raise_at_pickle"): _cell(NotPicklable, "FaultyError"),
    ("raised", "raise_at_unpickle"): _cell(NotPicklable, "FaultyError"),
    ("raised", "exit_at_unpickle"): _cell(NotPicklable, "FaultyError"),
    ("raised", "os_exit_at_unpickle"): _cell(WorkerCrashed, CRASHED_3),
    ("raised", "segfault_at_unpickle"): _cell(WorkerCrashed, SEGV),
    ("raised", "frozen"): _cell(NotPicklable, "FrozenError"),
    ("raised", "unrebuildable"): _cell(NotPicklable, "UnrebuildableError"),
    ("raised", "main"): _cell(NotPicklable, "MainError"),
}

#: Dask cells whose fault kills dask workers: not run (xfail, run=False). dask
#: restarts a dead worker and retries its task up to its allowed-failures (3),
#: so each such cell takes minutes on 2 cores, and the session's cluster with
#: it; test_dask.py and test_dask_pickling.py cover a task and a function that kill
#: their workers.
DASK_NOT_RUN = ("os_exit_at_unpickle", "segfault_at_unpickle")

WHATS = (*_faults.WHATS, "main")


def cells() -> Iterator[Any]:
    for backend in ("process", "dask"):
        if backend == "dask" and not HAS_DASK:
            continue   # dask is an optional extra
        for (where, what), expect in EXPECTED.items():
            for how in ("submit", "map"):
                if expect.scope == "refused" and where == "initarg" and how == "map":
                    continue   # Pool() itself refuses it: how the work is given does not apply
                marks = [pytest.mark.timeout(expect.bound + 20)]   # a hang fails, bounded
                if backend == "dask" and what in DASK_NOT_RUN:
                    marks += [pytest.mark.xfail(
                        run=False, reason="dask: a fault that kills dask workers does not "
                        "end within its bound (see DASK_NOT_RUN)")]
                yield pytest.param(backend, where, what, how,
                                   id=f"{backend}-{where}-{what}-{how}", marks=marks)


# -- one cell ----------------------------------------------------------------------

def _maker(where: str, what: str) -> Callable[[], Any]:
    return functools.partial(_faults.make_error if where == "raised" else _faults.make, what)


def _check(outcome: object, expect: Expect, label: str, index: int | None) -> list[str]:
    if not isinstance(outcome, expect.error):
        return [f"{label}: expected {expect.error.__name__}, got {outcome!r:.300}"]
    text = f"{outcome} | {outcome.__cause__}"
    problems = []
    if expect.fragment not in text:
        problems.append(f"{label}: {expect.fragment!r} not in {text!r:.500}")
    if index is not None and item_index(outcome) != index:
        problems.append(f"{label}: item_index {item_index(outcome)}, expected {index}")
    return problems


def _drain(results: Any, limit: float) -> list[Any] | None:
    """``list(results)`` in a helper thread; None if it is still going after ``limit``."""
    got: list[Any] = []
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            got.extend(results)
        except BaseException as exc:
            failure.append(exc)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        return None
    if failure:
        return [failure[0]]
    return got


def _outcome(fut: Future[Any], limit: float) -> Any:
    try:
        return fut.result(timeout=limit)
    except TimeoutError:
        return TimeoutError(f"the call did not end within {limit} s")
    except BaseException as exc:
        return exc


def run_cell(backend: str, where: str, how: str, maker: Callable[[], Any], expect: Expect,
             cluster: Any = None) -> list[str]:
    """Run one cell; the ways it broke the contract (none: it holds)."""
    t0 = time.monotonic()
    problems: list[str] = []
    workers = 2 if backend == "process" else None
    init: dict[str, Any] = {}
    if where == "initarg":
        init = {"initializer": _faults.init_with, "initargs": (maker(),)}
    if expect.scope == "refused" and where == "initarg":
        try:
            conveyor.Pool(backend, workers, cluster=cluster, **init).close()
        except BaseException as exc:
            return _check(exc, expect, "Pool()", None)
        return ["Pool() accepted an initializer argument that cannot be pickled"]
    fn: Callable[[Any], Any] = _faults.double
    if where == "function":
        fn = functools.partial(_faults.carry, maker())
    elif where == "result":
        fn = functools.partial(_faults.produce, maker, BAD)
    elif where == "raised":
        fn = functools.partial(_faults.throw, maker, BAD)
    with conveyor.Pool(backend, workers, cluster=cluster, **init) as pool:
        every = expect.scope in ("all", "refused")
        if how == "submit":
            arg = maker() if where == "item" else BAD
            problems += _check(_outcome(pool.submit(fn, arg), expect.bound), expect,
                               "the submitted call", None)
        else:
            items: list[Any] = list(range(N_ITEMS))
            if where == "item":
                items[BAD] = maker()
            try:
                out = _drain(pool.map(fn, items, batch=N_ITEMS, on_error="return"),
                             expect.bound)
            except BaseException as exc:
                out = None
                if expect.scope != "refused":
                    problems.append(f"pool.map raised {exc!r:.300}")
                else:
                    problems += _check(exc, expect, "pool.map", None)
            else:
                if expect.scope == "refused":
                    problems.append("pool.map accepted a function that cannot be pickled")
            if out is None and expect.scope != "refused":
                problems.append(f"pool.map did not end within {expect.bound} s")
            elif out is not None and len(out) != N_ITEMS:
                problems.append(f"pool.map gave {len(out)} results: {out!r:.300}")
            elif out is not None:
                for i, r in enumerate(out):
                    if every or i == BAD:
                        problems += _check(r, expect, f"item {i}", i)
                    elif r != 2 * i:
                        problems.append(f"item {i}: expected {2 * i}, got {r!r:.300}")
        elapsed = time.monotonic() - t0
        if elapsed > expect.bound:
            problems.append(f"the faulty work took {elapsed:.1f} s (bound {expect.bound} s)")
        later = [pool.submit(_faults.double, i) for i in range(LATER_CALLS)]
        deadline = time.monotonic() + expect.bound
        for i, fut in enumerate(later):
            r = _outcome(fut, max(0.0, deadline - time.monotonic()))
            if where == "initarg":
                problems += _check(r, expect, f"later call {i}", None)
            elif r != 2 * i:
                problems.append(f"later call {i}: expected {2 * i}, got {r!r:.300}")
            if len(problems) > 10:
                break
    left = wait_no_child_processes()
    if left:
        problems.append(f"processes left behind: {[p.pid for p in left]}")
    return problems


# -- the matrix ---------------------------------------------------------------------

MAIN_SCRIPT = textwrap.dedent("""
    import json, sys
    from tests.test_fault_matrix import EXPECTED, run_cell

    class MainError(Exception):
        # defined in __main__, so it travels by value; its __init__ refuses its own args
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")

    def make():
        return MainError("a", "b")

    backend, where, how, cluster = sys.argv[1:5]
    problems = run_cell(backend, where, how, make, EXPECTED[where, "main"], cluster or None)
    print(json.dumps(problems))
""")


@pytest.mark.parametrize(("backend", "where", "what", "how"), list(cells()))
def test_fault(backend: str, where: str, what: str, how: str, tmp_path: Path) -> None:
    """One cell of the matrix: see EXPECTED for its contract."""
    expect = EXPECTED[where, what]
    if what == "main":   # a class defined in __main__: a real script, in a subprocess
        cluster = dask_session_client().scheduler.address if backend == "dask" else ""
        script = tmp_path / "main_fault.py"
        script.write_text(MAIN_SCRIPT)
        path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        proc = subprocess.run([sys.executable, str(script), backend, where, how, cluster],
                              cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": path},
                              timeout=expect.bound + 25)
        assert proc.returncode == 0, proc.stderr[-3000:]
        problems = json.loads(proc.stdout.splitlines()[-1])
    elif backend == "dask":
        with dask_session_client().as_current():
            problems = run_cell(backend, where, how, _maker(where, what), expect)
    else:
        problems = run_cell(backend, where, how, _maker(where, what), expect)
    assert problems == []
