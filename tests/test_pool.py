"""conveyor.Pool: warm workers, submit, initializer, close semantics."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, as_completed
from typing import Any

import pytest

import conveyor
from conveyor.errors import PoolClosed, WorkerInitError


def test_workers_are_reused_between_maps() -> None:
    idents: set[int] = set()

    def who(x: int) -> int:
        idents.add(threading.get_ident())
        return x

    with conveyor.Pool(workers=3) as pool:
        for _ in range(5):
            assert list(pool.map(who, range(100), batch=1)) == list(range(100))
    assert 1 <= len(idents) <= 3


def test_submit_returns_a_future() -> None:
    with conveyor.Pool(workers=2) as pool:
        futs = [pool.submit(pow, 2, i) for i in range(10)]
        assert all(isinstance(f, Future) for f in futs)
        assert sorted(f.result(5) for f in as_completed(futs)) == [2**i for i in range(10)]
        bad = pool.submit(int, "x")
        with pytest.raises(ValueError, match="invalid literal"):
            bad.result(5)


def test_submit_on_asyncio_pool() -> None:
    async def add(a: int, b: int = 0) -> int:
        await asyncio.sleep(0)
        return a + b

    with conveyor.Pool(backend="asyncio", workers=4) as pool:
        assert pool.submit(add, 1, b=2).result(5) == 3
        assert list(pool.map(add, range(5))) == list(range(5))


def test_initializer_runs_once_per_worker() -> None:
    state = threading.local()
    inits: list[int] = []

    def init(tag: str) -> None:
        state.model = tag
        inits.append(threading.get_ident())

    def use(x: int) -> str:
        return f"{state.model}:{x}"

    with conveyor.Pool(workers=2, initializer=init, initargs=("m",)) as pool:
        assert list(pool.map(use, range(50), batch=1)) == [f"m:{x}" for x in range(50)]
        assert list(pool.map(use, range(50), batch=1)) == [f"m:{x}" for x in range(50)]
    assert len(inits) == len(set(inits)) <= 2


def test_failing_initializer_fails_the_tasks() -> None:
    def init() -> None:
        raise OSError("no model")

    with conveyor.Pool(workers=1, initializer=init) as pool:
        with pytest.raises(WorkerInitError) as info:
            list(pool.map(abs, range(3)))
        assert isinstance(info.value.__cause__, OSError)


def test_close_waits_for_submitted_work_then_refuses() -> None:
    release = threading.Event()
    pool = conveyor.Pool(workers=1)
    f1 = pool.submit(release.wait, 10)
    f2 = pool.submit(abs, -5)
    closer = threading.Thread(target=pool.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()
    release.set()
    closer.join(10)
    assert f1.result(0) is True and f2.result(0) == 5
    with pytest.raises(PoolClosed):
        pool.submit(abs, 1)
    with pytest.raises(PoolClosed):
        pool.map(abs, [1])


def test_close_cancel_drops_queued_work() -> None:
    release = threading.Event()
    entered = threading.Event()

    def hold() -> bool:
        entered.set()
        return release.wait(10)

    pool = conveyor.Pool(workers=1)
    f1 = pool.submit(hold)
    queued = [pool.submit(abs, -i) for i in range(5)]
    assert entered.wait(10)
    threading.Timer(0.2, release.set).start()
    pool.close(cancel=True)
    assert f1.result(0) is True
    assert all(f.cancelled() for f in queued)


def test_future_cancel_before_start() -> None:
    release = threading.Event()
    ran: list[int] = []
    with conveyor.Pool(workers=1) as pool:
        pool.submit(release.wait, 10)
        f = pool.submit(ran.append, 1)
        assert f.cancel()
        release.set()
    assert ran == []


def test_with_block_error_cancels() -> None:
    release = threading.Event()
    with pytest.raises(RuntimeError), conveyor.Pool(workers=1) as pool:
        pool.submit(release.wait, 0.3)
        queued = pool.submit(abs, 1)
        raise RuntimeError("caller failed")
    assert queued.cancelled()


@pytest.mark.parametrize("backend", ["thread", "asyncio"])
def test_idle_workers_hold_no_results(backend: str) -> None:
    """A warm pool must not keep the last batches' items and results alive."""
    import gc
    import weakref

    class Big:
        pass

    refs: list[weakref.ref[Big]] = []

    def make(x: int) -> Big:
        b = Big()
        refs.append(weakref.ref(b))
        return b

    async def amake(x: int) -> Big:
        return make(x)

    fn: Any = amake if backend == "asyncio" else make
    with conveyor.Pool(backend=backend, workers=8) as pool:
        n = 0
        for _ in pool.map(fn, range(10_000)):
            n += 1
        del _
        gc.collect()
        alive = sum(1 for r in refs if r() is not None)
    assert n == 10_000
    assert alive == 0
