"""``backend="dask"``: what cannot travel to or from the cluster, on real
dask.distributed clusters. An item or a result that cannot be rebuilt on the
other side fails alone; exceptions of the user's ``__main__``; initializers,
functions and arguments that cannot be sent; a ``SystemExit`` while unpickling
an outcome; a function that kills every worker that loads it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.errors import WorkerCrashed

from ._crossproc import Tally
from ._dask_helpers import square
from .conftest import child_processes, wait_no_child_processes

distributed = pytest.importorskip("distributed")


def _explode_off_parent(parent: int, x: int) -> int:
    """Rebuilds ``x`` in the test process, raises anywhere else (a dask worker)."""
    if os.getpid() != parent:
        raise ValueError(f"item {x} cannot be rebuilt on the worker")
    return x


class OnlyHere:
    """An item whose unpickling fails on the workers."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode_off_parent, (os.getpid(), self.x))


def identity(x: Any) -> Any:
    return x


def test_an_item_that_cannot_be_rebuilt_on_the_worker_fails_alone(client: Any) -> None:
    items: list[Any] = list(range(10))
    items[5] = OnlyHere(5)
    out = list(conveyor.map(identity, items, backend="dask", cluster=client, batch=10,
                            on_error="return"))
    # NotPicklable, as on the process backend, caused by the unpickling's own error
    assert isinstance(out[5], conveyor.errors.NotPicklable), out
    assert isinstance(out[5].__cause__, ValueError), out[5].__cause__
    assert "OnlyHere" in str(out[5]) and "item 5 cannot be rebuilt" in str(out[5])
    assert [x for i, x in enumerate(out) if i != 5] == [0, 1, 2, 3, 4, 6, 7, 8, 9]


def only_on_workers(x: int, tally: Tally) -> Any:
    """``x``, but item 3 becomes an object of a module only the workers can import."""
    tally.add("ran")
    if x != 3:
        return x
    import conveyor_workers_only  # type: ignore[import-not-found]

    return conveyor_workers_only.Thing(x)


def add_path(path: str) -> None:
    sys.path.insert(0, path)


def remove_path(path: str) -> None:
    sys.path.remove(path)


def test_a_result_the_client_cannot_unpickle_fails_alone(client: Any, tmp_path: Path
                                                          ) -> None:
    (tmp_path / "conveyor_workers_only.py").write_text(
        "class Thing:\n    def __init__(self, x):\n        self.x = x\n")
    client.run(add_path, str(tmp_path))
    try:
        assert str(tmp_path) not in sys.path
        tally = Tally()
        out = list(conveyor.map(functools.partial(only_on_workers, tally=tally), range(40),
                                backend="dask", cluster=client, batch=40, on_error="return"))
    finally:
        client.run(remove_path, str(tmp_path))
    assert isinstance(out[3], conveyor.errors.NotPicklable), out
    assert "conveyor_workers_only" in str(out[3])
    assert [x for i, x in enumerate(out) if i != 3] == [i for i in range(40) if i != 3]
    assert tally.count("ran") == 40   # its batch-mates were not run again


def test_a_failing_initializer_gives_worker_init_error(client: Any) -> None:
    def init() -> None:
        raise OSError("no model here")

    out = list(conveyor.map(square, range(4), backend="dask", cluster=client,
                            initializer=init, on_error="return"))
    assert all(isinstance(e, conveyor.errors.WorkerInitError) for e in out), out
    assert isinstance(getattr(out[0], "__cause__", None), OSError)


def test_an_unpicklable_initializer_fails_before_a_cluster_starts() -> None:
    import threading
    lock = threading.Lock()
    with pytest.raises(conveyor.errors.NotPicklable, match="initializer"):
        conveyor.map(square, [1], backend="dask", workers=1, initializer=print,
                     initargs=(lock,))
    assert not child_processes()


# A user's script: exception classes of its own __main__ (defined after dask is
# imported, so that tblib's pickling support, which distributed installs for the
# exception classes that exist at its import, does not rebuild them), on a
# cluster the script starts itself.
MAIN_EXCEPTIONS = """
import json, sys
from dataclasses import dataclass
import distributed
import conveyor


class Unrebuildable(Exception):
    # pickles its args only, (code,): Unrebuildable(code) lacks `where`
    def __init__(self, code, where):
        super().__init__(code)
        self.where = where


@dataclass(frozen=True)
class Frozen(Exception):
    code: int


def returns(x):
    return Unrebuildable(x, "here") if x == 5 else x


def identity(x):
    return x


def raises(x):
    if x == 5:
        raise Unrebuildable(x, "here")
    return x


def raises_frozen(x):
    if x == 5:
        raise Frozen(x)
    return x


def outcome(v):
    if isinstance(v, BaseException):
        return [type(v).__name__, isinstance(v, conveyor.errors.NotPicklable), str(v)]
    return v


def run(pool):
    report = {}
    for name, fn, items in [
            ("returned", returns, list(range(10))),
            ("item", identity, [Unrebuildable(5, "here") if i == 5 else i for i in range(10)]),
            ("raised", raises, list(range(10))),
            ("raised_frozen", raises_frozen, list(range(10)))]:
        out = list(pool.map(fn, items, batch=10, on_error="return"))
        try:
            alone = outcome(pool.submit(fn, items[5]).result(timeout=60))
        except BaseException as exc:
            alone = outcome(exc)
        report[name] = {"map": [outcome(v) for v in out], "submit": alone}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "own":   # conveyor starts a LocalCluster in a helper
        with conveyor.Pool("dask", workers=2) as pool:
            run(pool)
    else:                      # the script's own LocalCluster (workers re-import it)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                      dashboard_address=":0", silence_logs=50) as cluster, \\
                distributed.Client(cluster) as client, \\
                conveyor.Pool("dask", cluster=client) as pool:
            run(pool)
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", ["own", "script"])
def test_unrebuildable_exceptions_of_main_fail_their_item_with_not_picklable(
        tmp_path: Path, cluster: str) -> None:
    """An exception class of the user's __main__ that its pickle cannot rebuild
    (returned, passed as an item, raised), and a frozen dataclass exception
    raised by the task: NotPicklable for that item or call, the rest right."""
    import json

    script = tmp_path / "main_exceptions.py"
    script.write_text(MAIN_EXCEPTIONS)
    proc = subprocess.run([sys.executable, str(script), cluster], capture_output=True,
                          text=True, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, got in report.items():
        out = got["map"]
        assert [v for i, v in enumerate(out) if i != 5] == [0, 1, 2, 3, 4, 6, 7, 8, 9], \
            (name, out)
        assert out[5][1] is True, (name, out[5])        # a NotPicklable
        assert got["submit"][1] is True, (name, got["submit"])
        expected = "Frozen" if name == "raised_frozen" else "Unrebuildable"
        assert expected in out[5][2], (name, out[5])    # it names the class
    assert not wait_no_child_processes(15), child_processes()


def test_pool_submit_of_what_cannot_be_sent_fails_its_future(client: Any) -> None:
    """A function or an argument that cannot be pickled fails the call's future
    with NotPicklable (Pool.submit holds its lock while the backend takes the call:
    reporting the failure from inside it deadlocked), and the pool goes on."""
    import threading

    lock = threading.Lock()
    with conveyor.Pool("dask", cluster=client) as pool:
        bad_fn = pool.submit(lambda x: (lock, x), 1)
        with pytest.raises(conveyor.errors.NotPicklable, match="lock"):
            bad_fn.result(timeout=30)
        bad_arg = pool.submit(identity, lock)
        with pytest.raises(conveyor.errors.NotPicklable, match="lock"):
            bad_arg.result(timeout=30)
        assert pool.submit(square, 4).result(timeout=30) == 16
        assert list(pool.map(square, range(5))) == [0, 1, 4, 9, 16]


def _exit_in(pid: int) -> object:
    """Unpickles as None except in process ``pid``, where it raises SystemExit."""
    if os.getpid() == pid:
        raise SystemExit("exit while unpickling")
    return None


class ExitsThere:
    """Raises SystemExit as it is unpickled in the process ``pid``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_exit_in, (self.pid,))


class ExitsThereError(Exception):
    """An exception that raises SystemExit as it is unpickled in the process ``pid``."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_exit_in, (self.pid,))


def exit_on_arrival(x: int, *, pid: int, raised: bool) -> int:
    if x == 10:
        if raised:
            raise ExitsThereError(pid)
        return ExitsThere(pid)  # type: ignore[return-value]
    return x


@pytest.mark.parametrize("raised", [False, True], ids=["returned", "raised"])
def test_systemexit_unpickling_an_outcome_in_the_client_fails_that_item(
        client: Any, raised: bool) -> None:
    """A result, or a raised exception, whose unpickling in the client raises
    SystemExit: that item fails with NotPicklable. (It ended the thread that
    receives the cluster's results, and every later result with it: a hang.)"""
    fn = functools.partial(exit_on_arrival, pid=os.getpid(), raised=raised)
    with conveyor.Pool("dask", cluster=client) as pool:
        out: list[Any] = list(pool.map(fn, range(21), batch=21, on_error="return"))
        assert isinstance(out[10], conveyor.errors.NotPicklable), out
        assert [x for i, x in enumerate(out) if i != 10] == [i for i in range(21) if i != 10]
        with pytest.raises(conveyor.errors.NotPicklable):
            pool.submit(fn, 10).result(timeout=30)
        assert list(pool.map(fn, range(5))) == list(range(5))


def _die_off(parent: int) -> Any:
    """``identity`` in the test process; anywhere else (a dask worker) the process dies."""
    if os.getpid() != parent:
        os._exit(3)
    return identity


class DiesThere:
    """A function whose unpickling kills the process (a dask worker) that loads it."""

    def __init__(self) -> None:
        self.parent = os.getpid()

    def __call__(self, x: Any) -> Any:
        return x

    def __reduce__(self) -> tuple[Any, ...]:
        return (_die_off, (self.parent,))


@pytest.mark.timeout(120)
def test_a_function_that_kills_every_worker_loading_it_fails_at_once(own_cluster: Any
                                                                     ) -> None:
    """Each item would kill workers in turn (dask's allowed-failures, again
    alone, for each one): a task without items tells that the function kills
    them, and every item of it fails with WorkerCrashed at once. The pool goes on."""
    t0 = time.monotonic()
    with conveyor.Pool("dask", cluster=own_cluster) as pool:
        out: list[Any] = list(pool.map(DiesThere(), range(21), on_error="return"))
        assert all(isinstance(e, WorkerCrashed) for e in out), out
        assert "even for a task without items" in str(out[0])
        with pytest.raises(WorkerCrashed):
            pool.submit(DiesThere(), 1).result(timeout=60)
        own_cluster.wait_for_workers(2, timeout=30)
        assert list(pool.map(square, range(5))) == [0, 1, 4, 9, 16]
    assert time.monotonic() - t0 < 90
