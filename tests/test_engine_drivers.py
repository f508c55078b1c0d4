"""Which driver runs a map: a sync map of a coroutine function runs its engine
on conveyor's event loop, with no dispatcher thread; other maps keep one."""

from __future__ import annotations

import asyncio
import threading

import conveyor


def _dispatchers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "conveyor-scheduler"]


def test_a_sync_map_of_coroutines_has_no_dispatcher_thread() -> None:
    async def fn(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    seen = []
    for r in conveyor.map(fn, range(200), workers=8):
        seen.append(_dispatchers())
        assert r >= 0
    assert all(names == [] for names in seen)


def test_a_pool_on_asyncio_has_no_dispatcher_thread_and_keeps_its_guarantees() -> None:
    async def fn(x: int) -> int:
        await asyncio.sleep(0.001 * (x % 3))
        if x == 7:
            raise KeyError(x)
        return x

    with conveyor.Pool(backend="asyncio", workers=4) as pool:
        out: list[object] = []
        for r in pool.map(fn, range(20), on_error="return", window=6):
            out.append(r)
            assert _dispatchers() == []
    assert out[:7] == list(range(7)) and isinstance(out[7], KeyError)
    assert out[8:] == list(range(8, 20))


def test_a_sync_map_on_threads_keeps_its_dispatcher_thread() -> None:
    # Item 1 waits until the consumer has looked, so the run is still going then.
    looked = threading.Event()

    def fn(x: int) -> int:
        if x == 1:
            assert looked.wait(10)
        return x

    seen = []
    for _ in conveyor.map(fn, range(2), backend="thread", workers=2, ordered=False):
        seen.append(_dispatchers())
        looked.set()
    assert seen[0] == ["conveyor-scheduler"]


def test_amap_of_coroutines_runs_its_engine_on_the_callers_loop() -> None:
    async def fn(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    async def main() -> tuple[list[int], list[list[str]]]:
        out, seen = [], []
        async for r in conveyor.amap(fn, range(100), workers=5, window=10):
            out.append(r)
            seen.append(_dispatchers())
        return out, seen

    out, seen = asyncio.run(main())
    assert out == list(range(1, 101))
    assert all(names == [] for names in seen)


def test_amap_of_a_sync_function_keeps_its_dispatcher_thread() -> None:
    looked = threading.Event()   # as above: the run is still going when we look

    def fn(x: int) -> int:
        if x == 1:
            assert looked.wait(10)
        return x

    async def main() -> list[list[str]]:
        seen = []
        async for _ in conveyor.amap(fn, range(2), workers=2, ordered=False):
            seen.append(_dispatchers())
            looked.set()
        return seen

    assert asyncio.run(main())[0] == ["conveyor-scheduler"]
