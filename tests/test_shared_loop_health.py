"""The shared event loop stays healthy: a map stopped early leaves nothing on
it, a sync map called on the loop runs on a loop of its own, run_coroutine
refuses the loop itself and returns or raises what its coroutine does, and a
Pool runs on a loop you give it (a bad one is refused at once).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import conveyor

from .conftest import Sleepers, shared_loop_tasks


def _the_loop() -> asyncio.AbstractEventLoop:
    return conveyor.run_coroutine(_running_loop())


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _healthy_after(loop: asyncio.AbstractEventLoop) -> None:
    """Nothing of the last map is left on the loop, and the next map runs on it."""
    assert not shared_loop_tasks()
    assert _the_loop() is loop

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    assert list(conveyor.map(double, range(50), workers=8)) == [2 * x for x in range(50)]


def test_a_map_stopped_early_leaves_the_loop_healthy() -> None:
    loop = _the_loop()

    sleepers = Sleepers(8)
    results = conveyor.map(sleepers.fn(), range(100), workers=8)
    assert sleepers.all_started.wait(10)
    results.close()
    assert len(sleepers.cancelled) == sleepers.started >= 8   # every call that started
    _healthy_after(loop)

    sleepers = Sleepers(4)
    fn = sleepers.fn()

    async def first_quick(x: int) -> Any:
        return x if x == 0 else await fn(x)

    for _ in conveyor.map(first_quick, range(100), workers=5):
        break
    _healthy_after(loop)

    async def fails(x: int) -> int:
        if x == 3:
            raise ValueError("item 3")
        return await fn(x) if x > 3 else x

    with pytest.raises(ValueError, match="item 3"):
        list(conveyor.map(fails, range(100), workers=8))
    _healthy_after(loop)

    with pytest.raises(conveyor.TaskTimeout):
        list(conveyor.map(fn, range(3), timeout=0.05))
    _healthy_after(loop)


# A sync map inside a coroutine warns (issue 13, item 6) and points to amap;
# here it is on purpose.
@pytest.mark.filterwarnings("ignore:.*amap")
def test_a_sync_map_called_on_the_loop_runs_on_a_loop_of_its_own() -> None:
    async def inner(x: int) -> tuple[asyncio.AbstractEventLoop, int]:
        await asyncio.sleep(0)
        return asyncio.get_running_loop(), x

    async def outer(x: int) -> tuple[list[int], bool]:
        # This blocks the shared loop while it waits: the inner map's work
        # cannot run there, or it would never run.
        got = list(conveyor.map(inner, range(3)))
        return [v for _, v in got], all(loop is not asyncio.get_running_loop()
                                        for loop, _ in got)

    assert list(conveyor.map(outer, range(2), workers=2)) == [([0, 1, 2], True)] * 2


def test_run_coroutine_on_the_loop_itself_is_refused() -> None:
    async def nested() -> str:
        inner = asyncio.sleep(0, "x")
        with pytest.raises(RuntimeError, match="await the coroutine instead"):
            conveyor.run_coroutine(inner)
        return await asyncio.sleep(0, "awaited")

    assert conveyor.run_coroutine(nested()) == "awaited"


def test_run_coroutine_returns_and_raises_what_the_coroutine_does() -> None:
    async def boom() -> None:
        await asyncio.sleep(0)
        raise KeyError("k")

    assert conveyor.run_coroutine(asyncio.sleep(0, 42)) == 42
    with pytest.raises(KeyError, match="k"):
        conveyor.run_coroutine(boom())
    with pytest.raises(TypeError, match=r"call it: run_coroutine\(fn\(...\)\)"):
        conveyor.run_coroutine(boom)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a coroutine object, got 3"):
        conveyor.run_coroutine(3)  # type: ignore[arg-type]


def test_a_pool_runs_on_a_loop_you_give_it() -> None:
    # The opt-out from the shared loop: run the loop yourself.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-own-loop")
    thread.start()

    async def on_mine(x: int) -> bool:
        await asyncio.sleep(0)
        return asyncio.get_running_loop() is loop

    try:
        with conveyor.Pool(backend="asyncio", workers=2, loop=loop) as pool:
            assert all(pool.map(on_mine, range(10)))
            assert pool.submit(on_mine, 1).result(10)
        assert loop.is_running()   # the pool never stops a loop it did not start
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_bad_loop_for_a_pool_is_refused_at_once() -> None:
    with pytest.raises(TypeError, match="loop= must be an asyncio event loop"):
        conveyor.Pool(backend="asyncio", loop=object())
    closed = asyncio.new_event_loop()
    closed.close()
    with pytest.raises(ValueError, match="loop= is closed"):
        conveyor.Pool(backend="asyncio", loop=closed)
