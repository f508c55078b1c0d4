"""Shared fixtures: every contract test runs on every backend."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import threading
import time
import typing
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from conveyor import _backends
from conveyor._options import BackendName

from ._crossproc import Gate

__all__ = ["BACKENDS", "BackendName", "Gate", "Sleepers", "child_processes", "task",
           "wait_no_child_processes", "wait_no_conveyor_threads", "waiting_task"]

#: dask where it is installed (the dev extra has it; CI's extra Pythons install
#: only the test extra, and run the other backends' tests)
HAS_DASK = importlib.util.find_spec("distributed") is not None
#: The built-in backends whose modules are installed, from the registry (each
#: class says what it requires). Backends registered by tests are tested in
#: their own files: the contract tests need timeouts, stealing and the rest.
BACKENDS: list[BackendName] = [
    typing.cast(BackendName, name) for name in _backends.builtin()
    if _backends.backend_class(name).installed()]

#: The session's dask cluster (started by the first test that needs it).
_dask: dict[str, Any] = {}


def dask_session_client() -> Any:
    """A Client of a real LocalCluster (2 worker processes, 1 thread each), shared by
    the session's tests. It is not the default client: tests opt in."""
    if "client" not in _dask:
        import distributed

        cluster = distributed.LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
            silence_logs=40)
        _dask["cluster"] = cluster
        _dask["client"] = distributed.Client(  # type: ignore[no-untyped-call]
            cluster, set_as_default=False)
    return _dask["client"]


@pytest.fixture
def client() -> Any:
    """The session's dask client (``dask_session_client``), for dask's own tests."""
    return dask_session_client()


@pytest.fixture
def own_cluster() -> Iterator[Any]:
    """A LocalCluster for one test (its workers may be killed), closed at the end;
    the scheduler gives up on a task after it killed one worker."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=50,
                                       scheduler_kwargs={"allowed_failures": 1})
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def dask_session_pids() -> set[int]:
    """The processes of the session's dask cluster (not leftovers of a test)."""
    client = _dask.get("client")
    if client is None:
        return set()
    import os

    pids: set[int] = set()
    for pid in client.run(os.getpid).values():
        pids.add(pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
    return pids


def pytest_sessionfinish() -> None:
    client, cluster = _dask.pop("client", None), _dask.pop("cluster", None)
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[BackendName]:
    """Each backend; for dask, the session's cluster is the current client meanwhile,
    so ``backend="dask"`` without ``cluster=`` runs on it."""
    name: BackendName = request.param
    if name != "dask":
        yield name
        return
    with dask_session_client().as_current():
        yield name


def task(backend: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` as the backend wants it: itself for threads, wrapped in ``async def`` for asyncio."""
    if backend == "asyncio":
        async def coro(x: Any) -> Any:
            return fn(x)
        coro.__qualname__ = getattr(fn, "__qualname__", "coro")
        return coro
    return fn


def waiting_task(backend: str, gate: Gate, slow: Callable[[Any], bool],
                 limit: float = 10.0) -> Callable[[Any], Any]:
    """A task that, for items where ``slow(x)``, waits (boundedly) for ``gate``
    (a :class:`Gate`, which worker processes can wait on too)."""
    if backend == "asyncio":
        async def acoro(x: Any) -> Any:
            if slow(x):
                deadline = time.monotonic() + limit
                # the gate is a threading.Event set from the test thread: poll it
                while not gate.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
            return x
        return acoro

    def sync(x: Any) -> Any:
        if slow(x):
            gate.wait(limit)
        return x
    return sync


class Sleepers:
    """A coroutine function whose calls wait (up to 60 s) until cancelled.

    ``all_started`` is set once ``expected`` calls have started; ``cancelled``
    lists the items whose call was cancelled.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.started = 0
        self.all_started = threading.Event()
        self.cancelled: list[Any] = []

    def fn(self) -> Callable[[Any], Any]:
        async def sleeper(x: Any) -> Any:
            self.started += 1
            if self.started >= self.expected:
                self.all_started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.append(x)
                raise
            return x
        return sleeper


def conveyor_threads() -> list[threading.Thread]:
    """conveyor's threads that are alive, except the shared event loop's, which
    lives as long as the process (``shared_loop_tasks`` checks what runs on it)."""
    return [t for t in threading.enumerate() if t.name.startswith("conveyor-") and t.is_alive()
            and t.name != "conveyor-loop"]


def shared_loop_tasks(limit: float = 10.0) -> list[str]:
    """Tasks still on conveyor's shared event loop after waiting (up to ``limit``
    seconds) for them to end; a loop blocked for that long is reported too."""
    from conveyor._loop import current_shared_loop

    loop = current_shared_loop()
    if loop is None or loop.is_closed():
        return []

    async def left() -> list[str]:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        if tasks:
            await asyncio.wait(tasks, timeout=limit)
        return [repr(t) for t in asyncio.all_tasks() if t is not me and not t.done()]

    try:
        return asyncio.run_coroutine_threadsafe(left(), loop).result(limit + 5)
    except concurrent.futures.TimeoutError:   # not the builtin TimeoutError on 3.10
        return ["(the loop is blocked)"]


def wait_no_conveyor_threads(limit: float = 10.0) -> list[threading.Thread]:
    deadline = time.monotonic() + limit
    left = conveyor_threads()
    while left and time.monotonic() < deadline:
        for t in left:
            t.join(max(0.0, deadline - time.monotonic()))
        left = conveyor_threads()
    return left


@pytest.fixture(autouse=True)
def no_thread_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test, no conveyor thread may still be running."""
    yield
    if request.node.get_closest_marker("leaves_abandoned_threads"):
        return
    left = wait_no_conveyor_threads()
    assert not left, f"threads left running: {[t.name for t in left]}"
    tasks = shared_loop_tasks()
    assert not tasks, f"tasks left on conveyor's event loop: {tasks}"


def child_processes() -> list[psutil.Process]:
    """Live (not zombie) descendants of the test process.

    Except multiprocessing's resource tracker: the stdlib starts one per
    process for its own pools (the demo's stdlib side uses one) and it lives as
    long as the test process; and the session's dask cluster.
    """
    out = []
    session = dask_session_pids()
    for p in psutil.Process().children(recursive=True):
        if p.pid in session:
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE or \
                    "multiprocessing.resource_tracker" in " ".join(p.cmdline()):
                continue
            out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_no_child_processes(limit: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + limit
    left = child_processes()
    while left and time.monotonic() < deadline:
        psutil.wait_procs(left, timeout=max(0.0, min(0.2, deadline - time.monotonic())))
        left = child_processes()
    return left


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """After every test, no child process may still be running."""
    yield
    left = wait_no_child_processes()
    for p in left:   # do not let one test's leftovers fail the next ones
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    assert not left, f"processes left running: {[(p.pid, p.cmdline()[:3]) for p in left]}"
