"""multiprocessing's shared objects on the process backend, as with ``ProcessPoolExecutor``.

A ``Queue``, ``Lock``, ``Event``, ``Value``... in ``initargs`` is shared by
every worker and the parent; ``Manager()`` proxies work in initargs and in
call arguments; what cannot work fails with an error that names what does.
Real worker processes, real semaphores, pipes and shared memory, a real
manager process (each test shuts its own down).
"""

from __future__ import annotations

import gc
import logging
import logging.handlers
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from multiprocessing.context import BaseContext
from typing import Any

import pytest

import conveyor
from conveyor.errors import NotPicklable

WAIT = 10.0   # seconds: every wait here is bounded
SPAWN = multiprocessing.get_context("spawn")
# Objects made in these contexts have named semaphores: a fresh interpreter
# opens them. ("fork" objects are refused: see test_fork_context_objects_are_refused.)
SHARING_CONTEXTS = ["spawn", "forkserver"]


def keep(*objects: Any) -> None:
    """The initializer: keep what the pool shares in the worker's state."""
    conveyor.worker_state()["shared"] = objects


def shared() -> tuple[Any, ...]:
    objects: tuple[Any, ...] = conveyor.worker_state()["shared"]
    return objects


# -- each kind of object in initargs, shared by two workers and the parent ---------
#
# Every kind runs the same way: two tasks, submitted to a pool of two workers,
# first meet the parent at a Barrier(3) (itself shared through initargs), so
# they run on two different workers at once; then each does `work` with the
# object, and the parent checks with `check` what both did.

Make = Callable[[BaseContext], Any]
Work = Callable[[Any, int], Any]
Check = Callable[[Any, list[Any]], None]


def run_kind(ctx: BaseContext, obj: Any, work: Work, check: Check,
             before: Callable[[Any], None] | None = None) -> None:
    barrier = ctx.Barrier(3)
    if before is not None:
        before(obj)
    with conveyor.Pool(backend="process", workers=2, initializer=keep,
                       initargs=(barrier, obj)) as pool:
        futures = [pool.submit(meet_then, work, i) for i in range(2)]
        barrier.wait(WAIT)
        check(obj, [f.result(WAIT) for f in futures])


def meet_then(work: Work, i: int) -> tuple[int, Any]:
    barrier, obj = shared()
    barrier.wait(WAIT)
    return os.getpid(), work(obj, i)


def two_workers(results: list[Any]) -> list[Any]:
    pids = {pid for pid, _ in results}
    assert len(pids) == 2, results
    return [r for _, r in results]


def value_work(v: Any, i: int) -> None:
    with v.get_lock():
        v.value += 1


def value_check(v: Any, results: list[Any]) -> None:
    two_workers(results)
    with v.get_lock():
        v.value += 1
    assert v.value == 3


def array_work(a: Any, i: int) -> None:
    a[i] = os.getpid()


def array_check(a: Any, results: list[Any]) -> None:
    two_workers(results)
    assert set(a[:2]) == {pid for pid, _ in results}


def lock_work(lock: Any, i: int) -> bool:
    return bool(lock.acquire(timeout=0))   # the parent holds it


def lock_check(lock: Any, results: list[Any]) -> None:
    assert two_workers(results) == [False, False]
    lock.release()


def semaphore_work(sem: Any, i: int) -> None:
    sem.release()


def semaphore_check(sem: Any, results: list[Any]) -> None:
    two_workers(results)
    assert sem.acquire(timeout=WAIT)
    assert sem.acquire(timeout=WAIT)


def condition_work(pair: Any, i: int) -> None:
    cond, n = pair
    with cond:
        n.value += 1
        cond.notify_all()


def condition_check(pair: Any, results: list[Any]) -> None:
    two_workers(results)
    cond, n = pair
    with cond:
        assert cond.wait_for(lambda: n.value == 2, WAIT)


def queue_work(q: Any, i: int) -> None:
    q.put(os.getpid())


def queue_check(q: Any, results: list[Any]) -> None:
    two_workers(results)
    assert {q.get(timeout=WAIT), q.get(timeout=WAIT)} == {pid for pid, _ in results}


def simple_queue_work(q: Any, i: int) -> Any:
    return q.get()   # the parent put two items before the pool started


def simple_queue_check(q: Any, results: list[Any]) -> None:
    assert sorted(two_workers(results)) == ["a", "b"]


def joinable_work(q: Any, i: int) -> Any:
    item = q.get(timeout=WAIT)
    q.task_done()
    return item


def joinable_check(q: Any, results: list[Any]) -> None:
    assert sorted(two_workers(results)) == ["a", "b"]
    joiner = threading.Thread(target=q.join, daemon=True)
    joiner.start()
    joiner.join(WAIT)
    assert not joiner.is_alive(), "JoinableQueue.join() did not see the workers' task_done()"


def pipe_work(pipe: Any, i: int) -> None:
    pipe[1].send(os.getpid())


def pipe_check(pipe: Any, results: list[Any]) -> None:
    two_workers(results)
    got = set()
    for _ in range(2):
        assert pipe[0].poll(WAIT)
        got.add(pipe[0].recv())
    assert got == {pid for pid, _ in results}


def put_two(q: Any) -> None:
    q.put("a")
    q.put("b")


def hold(lock: Any) -> None:
    assert lock.acquire(timeout=WAIT)


def drain(sem: Any) -> None:
    assert sem.acquire(timeout=0)
    assert sem.acquire(timeout=0)


# (Event: see test_event_set_in_parent_releases_workers; Barrier: every kind uses one.)
KINDS: dict[str, tuple[Make, Work, Check, Callable[[Any], None] | None]] = {
    "Value": (lambda ctx: ctx.Value("i", 0), value_work, value_check, None),
    "Array": (lambda ctx: ctx.Array("q", 2), array_work, array_check, None),
    "RawArray": (lambda ctx: ctx.RawArray("q", 2), array_work, array_check, None),
    "Lock": (lambda ctx: ctx.Lock(), lock_work, lock_check, hold),
    "RLock": (lambda ctx: ctx.RLock(), lock_work, lock_check, hold),
    "Semaphore": (lambda ctx: ctx.Semaphore(0), semaphore_work, semaphore_check, None),
    "BoundedSemaphore": (lambda ctx: ctx.BoundedSemaphore(2), semaphore_work,
                         semaphore_check, drain),
    "Condition": (lambda ctx: (ctx.Condition(), ctx.RawValue("i", 0)), condition_work,
                  condition_check, None),
    "Queue": (lambda ctx: ctx.Queue(), queue_work, queue_check, None),
    "SimpleQueue": (lambda ctx: ctx.SimpleQueue(), simple_queue_work, simple_queue_check,
                    put_two),
    "JoinableQueue": (lambda ctx: ctx.JoinableQueue(), joinable_work, joinable_check,
                      put_two),
    "Pipe": (lambda ctx: ctx.Pipe(duplex=False), pipe_work, pipe_check, None),
}


@pytest.mark.parametrize("method", SHARING_CONTEXTS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_object_in_initargs_is_shared_by_workers_and_parent(kind: str, method: str) -> None:
    ctx = multiprocessing.get_context(method)
    make, work, check, before = KINDS[kind]
    obj = make(ctx)
    try:
        run_kind(ctx, obj, work, check, before)
    finally:
        for q in (obj if isinstance(obj, tuple) else (obj,)):
            if hasattr(q, "join_thread"):
                q.close()
                q.join_thread()


@pytest.mark.parametrize("method", SHARING_CONTEXTS)
def test_event_set_in_parent_releases_workers(method: str) -> None:
    ctx = multiprocessing.get_context(method)
    ev = ctx.Event()
    started = ctx.Semaphore(0)
    with conveyor.Pool(backend="process", workers=2, initializer=keep,
                       initargs=(ev, started)) as pool:
        futures = [pool.submit(wait_for_event) for _ in range(2)]
        assert started.acquire(timeout=WAIT)
        assert started.acquire(timeout=WAIT)   # both tasks wait for the event now
        assert not any(f.done() for f in futures)
        ev.set()
        results = [f.result(WAIT) for f in futures]
    assert [ok for _, ok in results] == [True, True]
    assert len({pid for pid, _ in results}) == 2


def wait_for_event() -> tuple[int, bool]:
    ev, started = shared()
    started.release()
    return os.getpid(), bool(ev.wait(WAIT))


def test_objects_without_semaphores_work_from_any_context() -> None:
    # RawValue/RawArray are shared memory only, a Pipe only descriptors: the
    # default ('fork' on Linux) context's work too.
    raw = multiprocessing.RawArray("q", 4)
    reader, writer = multiprocessing.Pipe(duplex=False)
    with conveyor.Pool(backend="process", workers=2, initializer=keep,
                       initargs=(raw, writer)) as pool:
        assert list(pool.map(write_raw, range(4))) == [None] * 4
    assert list(raw) == [10, 11, 12, 13]
    assert reader.poll(WAIT)
    assert reader.recv() in (0, 1, 2, 3)


def write_raw(i: int) -> None:
    raw, writer = shared()
    raw[i] = 10 + i
    if i == 0:
        writer.send(i)


def test_replacement_workers_share_what_the_parent_no_longer_holds() -> None:
    # With one task per worker, each task runs on a fresh worker, started
    # after the parent dropped its own references: the pool keeps the
    # objects (their semaphores' names, their memory) alive.
    pool = conveyor.Pool(backend="process", workers=1, initializer=keep,
                         initargs=(SPAWN.Value("i", 0), SPAWN.Lock()),
                         max_tasks_per_worker=1)
    gc.collect()
    try:
        runs = [pool.submit(count_under_lock).result(WAIT) for _ in range(3)]
    finally:
        pool.close()
    assert [n for n, _ in runs] == [1, 2, 3]
    assert len({pid for _, pid in runs}) == 3


def count_under_lock() -> tuple[int, int]:
    value, lock = shared()
    with lock:
        value.value += 1
        return value.value, os.getpid()


# -- the logging-queue pattern -------------------------------------------------------

class Collect(logging.Handler):
    def __init__(self, expected: int) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.expected = expected
        self.all_in = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if len(self.records) >= self.expected:
            self.all_in.set()


def install_queue_handler(q: Any) -> None:
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(q)]
    root.setLevel(logging.INFO)


def log_item(x: int) -> int:
    logging.getLogger("conveyor-test.worker").info("item %d", x)
    return os.getpid()


def test_logging_queue_pattern() -> None:
    q = SPAWN.Queue()
    handler = Collect(expected=20)
    listener = logging.handlers.QueueListener(q, handler)
    listener.start()
    try:
        with conveyor.Pool(backend="process", workers=2, initializer=install_queue_handler,
                           initargs=(q,)) as pool:
            pids = set(pool.map(log_item, range(20)))
        assert handler.all_in.wait(WAIT), f"{len(handler.records)} records of 20 arrived"
    finally:
        listener.stop()
        q.close()
        q.join_thread()
    assert sorted(r.getMessage() for r in handler.records) == \
        sorted(f"item {i}" for i in range(20))
    assert {r.name for r in handler.records} == {"conveyor-test.worker"}
    assert {r.process for r in handler.records} == pids
    assert os.getpid() not in pids


# -- Manager proxies ------------------------------------------------------------------

@pytest.fixture
def manager() -> Iterator[Any]:
    with SPAWN.Manager() as m:   # shut down by the test, before the leftover check
        yield m


def fill(i: int) -> int:
    d, lst, q = shared()
    d[i] = os.getpid()
    lst.append(i)
    q.put(i)
    return os.getpid()


def test_manager_proxies_in_initargs(manager: Any) -> None:
    d, lst, q = manager.dict(), manager.list(), manager.Queue()
    with conveyor.Pool(backend="process", workers=2, initializer=keep,
                       initargs=(d, lst, q)) as pool:
        pids = list(pool.map(fill, range(10)))
    assert dict(d) == dict(enumerate(pids))
    assert sorted(lst) == list(range(10))
    assert sorted(q.get(timeout=WAIT) for _ in range(10)) == list(range(10))


def put_in(d: Any, key: Any, *, lst: Any, q: Any) -> int:
    d[key] = os.getpid()
    lst.append(key)
    q.put(key)
    return os.getpid()


def put_pair(pair: tuple[Any, int]) -> int:
    d, i = pair
    d[i] = i * i
    return i


def append_nested(d: Any) -> tuple[int, list[Any]]:
    inner = d["inner"]   # a proxy the manager returns: it uses the worker's own authkey
    inner.append(os.getpid())
    return os.getpid(), list(inner)


def test_manager_proxies_in_submit_and_map_arguments(manager: Any) -> None:
    d, lst, q = manager.dict(), manager.list(), manager.Queue()
    with conveyor.Pool(backend="process", workers=2) as pool:
        pid = pool.submit(put_in, d, "k", lst=lst, q=q).result(WAIT)
        assert list(pool.map(put_pair, [(d, i) for i in range(6)])) == list(range(6))
        d["inner"] = manager.list()
        nested_pid, nested = pool.submit(append_nested, d).result(WAIT)
    assert d["k"] == pid
    assert list(lst) == ["k"]
    assert q.get(timeout=WAIT) == "k"
    assert {i: d[i] for i in range(6)} == {i: i * i for i in range(6)}
    assert nested == [nested_pid] == list(d["inner"])


def test_proxy_of_a_manager_with_its_own_authkey() -> None:
    from multiprocessing.managers import SyncManager

    with SyncManager(authkey=b"not the parent's key", ctx=SPAWN) as other:
        d = other.dict()
        with conveyor.Pool(backend="process", workers=1) as pool:
            pool.submit(put_pair, (d, 3)).result(WAIT)
        assert d[3] == 9


# -- what cannot work, and says what does -----------------------------------------------

# Kinds that hold a semaphore: made in the 'fork' context, unlinked at
# creation. (RawValue, RawArray and Pipe hold none: they work from any
# context, see test_objects_without_semaphores_work_from_any_context.)
FORK_REFUSED = ["Value", "Array", "Lock", "RLock", "Semaphore", "BoundedSemaphore",
                "Condition", "Event", "Barrier", "Queue", "SimpleQueue", "JoinableQueue"]


def make(ctx: BaseContext, kind: str) -> Any:
    if kind in ("Value", "Array"):
        return getattr(ctx, kind)("i", 1)
    if kind == "Barrier":
        return ctx.Barrier(2)
    return getattr(ctx, kind)()


@pytest.mark.parametrize("kind", FORK_REFUSED)
def test_fork_context_objects_are_refused_at_pool(kind: str) -> None:
    obj = make(multiprocessing.get_context("fork"), kind)
    with pytest.raises(NotPicklable) as info:
        conveyor.Pool(backend="process", initializer=keep, initargs=(1, obj))
    message = str(info.value)
    assert f"initargs[1], a {type(obj).__name__}," in message
    assert "'fork' context" in message
    assert "multiprocessing.get_context('spawn')" in message
    assert "Manager()" in message


# Kinds multiprocessing shares only with a process it starts (a Pipe's
# Connection too: pickled plainly, it would carry a descriptor number only).
SPAWN_ONLY = ["Value", "Array", "RawArray", "Lock", "Semaphore", "Condition", "Event",
              "Barrier", "Queue", "SimpleQueue", "JoinableQueue", "Connection"]


def make_spawned(kind: str) -> Any:
    if kind == "RawArray":
        return SPAWN.RawArray("i", 1)
    if kind == "Connection":
        return SPAWN.Pipe()[0]
    return make(SPAWN, kind)


def identity(x: Any) -> Any:
    return x


def assert_names_the_alternatives(error: BaseException | None, kind: str) -> None:
    assert isinstance(error, NotPicklable), repr(error)
    message = str(error)
    assert "cannot be sent with a task" in message
    assert "initargs" in message
    assert "Manager()" in message


@pytest.mark.parametrize("kind", SPAWN_ONLY)
def test_spawn_only_objects_in_submit_fail_the_future(kind: str) -> None:
    obj = make_spawned(kind)
    with conveyor.Pool(backend="process", workers=1) as pool:
        future = pool.submit(identity, obj)   # submit itself does not raise
        assert_names_the_alternatives(future.exception(WAIT), kind)
        assert f"a {type(obj).__name__}," in str(future.exception())
        assert pool.submit(identity, 5).result(WAIT) == 5   # the pool goes on


@pytest.mark.parametrize("kind", ["Lock", "Queue", "Value"])
def test_spawn_only_objects_in_map_items_fail_their_item(kind: str) -> None:
    obj = make_spawned(kind)
    with conveyor.Pool(backend="process", workers=1) as pool:
        out = list(pool.map(identity, [1, obj, 3], on_error="return"))
    assert out[0] == 1
    assert out[2] == 3
    assert_names_the_alternatives(out[1], kind)


def test_lock_in_a_closure_is_refused_naming_initargs() -> None:
    lock = SPAWN.Lock()

    def locked(x: int) -> int:
        with lock:
            return x

    with conveyor.Pool(backend="process", workers=1) as pool:
        future = pool.submit(locked, 1)
        assert_names_the_alternatives(future.exception(WAIT), "Lock")
