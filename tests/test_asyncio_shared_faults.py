"""The asyncio backend's shared batches at their edges: cancels, a loop that
shuts down or closes under a map, a fixed batch size, threads on both sides.
Real event loops, real cancellation."""

from __future__ import annotations

import asyncio
import collections
import gc
import queue
import sys
import threading
import weakref
from collections.abc import Callable

import pytest

import conveyor
from conveyor.errors import PoolClosed, TaskTimeout


class Item:
    """An item the test can watch being freed."""

    def __init__(self, n: int) -> None:
        self.n = n


def test_an_idle_worker_holds_nothing_of_a_batch_whose_item_it_saw_cancelled() -> None:
    """A worker whose item is cancelled with its batch (the run stopped early)
    goes idle holding nothing of it: an idle worker coroutine of a Pool must
    not keep the cancelled batch (every item of it) alive until it next draws."""
    items = [Item(i) for i in range(8)]
    refs = [weakref.ref(it) for it in items]

    async def fn(it: Item) -> int:
        if it.n:
            await asyncio.sleep(30)
        return it.n

    with conveyor.Pool(backend="asyncio", workers=8) as pool:
        results = pool.map(fn, items, batch=8)
        del items
        for r in results:
            assert r == 0
            break
        results.close()   # returns once the batch has ended
        del results
        gc.collect()
        alive = [ref().n for ref in refs if ref() is not None]   # type: ignore[union-attr]
        assert alive == []


def _host_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread, Callable[[], None]]:
    """A loop run by ``asyncio.run`` in a thread of its own; the callable ends
    its main coroutine, so ``asyncio.run`` cancels the tasks left (the
    workers) and closes the loop."""
    got: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = \
        queue.SimpleQueue()

    async def host() -> None:
        done = asyncio.Event()
        got.put((asyncio.get_running_loop(), done))
        await done.wait()

    thread = threading.Thread(target=asyncio.run, args=(host(),), name="test-host-loop")
    thread.start()
    loop, done = got.get(timeout=10)

    def end() -> None:
        loop.call_soon_threadsafe(done.set)

    return loop, thread, end


def test_a_map_hears_of_a_loop_shutdown_that_cancels_every_item_of_its_batches() -> None:
    """The loop given to a Pool ends (``asyncio.run`` returns) while every item
    of the map's batches has been drawn and runs. The map must end with
    ``PoolClosed``: a batch whose items ended without outcomes under a
    closing backend is reported lost, not as a batch that ended normally
    (which would leave the engine waiting for positions nobody records)."""
    loop, thread, end_loop = _host_loop()
    started = threading.Semaphore(0)

    async def fn(x: int) -> int:
        started.release()
        await asyncio.sleep(30)
        return x

    outcome: list[BaseException | list[int]] = []
    pool = conveyor.Pool(backend="asyncio", workers=4, loop=loop)
    results = pool.map(fn, range(4), batch=4)
    try:

        def consume() -> None:
            try:
                outcome.append(list(results))
            except BaseException as exc:
                outcome.append(exc)

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        for _ in range(4):
            assert started.acquire(timeout=10)
        end_loop()
        thread.join(10)
        assert not thread.is_alive()
        consumer.join(10)
        assert outcome, "the map never ended after its loop shut down"
        assert isinstance(outcome[0], PoolClosed)
    finally:
        # Stopping the run ends its wait (nothing is in flight any more).
        results.close()
        pool.close()


def test_a_fixed_batch_size_is_kept_on_asyncio() -> None:
    """``batch=<int>`` fixes the size (``_batching``: "fixes the size instead",
    capped by the window only), on asyncio too: the floor shared batches get
    (``workers // SHARED_SPLIT`` items) does not override what the user fixed."""
    async def same(x: int) -> int:
        await asyncio.sleep(0)
        return x

    results = conveyor.map(same, range(200), workers=100, batch=1)
    assert list(results) == list(range(200))
    assert results.stats.batches == 200


# Closing a loop that still has pending tasks (the workers) is the situation
# under test; asyncio logs each as destroyed, which is not what is checked.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_workers_frozen_on_a_closed_loop_leave_quietly_when_collected() -> None:
    """A loop given to a Pool is stopped and closed while items run: the map
    hears ``PoolClosed`` (``poll``). When the frozen worker coroutines are
    later collected, Python closes them (``GeneratorExit`` at ``await
    b.fn(x)``): that is no outcome of the item, and each worker must leave
    quietly, not record it and schedule a report on the closed loop
    ("Exception ignored ... RuntimeError: Event loop is closed")."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-own-loop")
    thread.start()

    async def fn(x: int) -> int:
        if x >= 4:
            await asyncio.sleep(30)
        return x

    pool = conveyor.Pool(backend="asyncio", workers=8, loop=loop)
    results = pool.map(fn, range(16), batch=16)
    it = iter(results)
    assert [next(it) for _ in range(4)] == [0, 1, 2, 3]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    with pytest.raises(PoolClosed):
        list(it)
    pool.close()

    ignored: list[BaseException | None] = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: ignored.append(u.exc_value)
    try:
        del pool, results, it
        gc.collect()
    finally:
        sys.unraisablehook = old
    assert [e for e in ignored if isinstance(e, RuntimeError)] == []


# -- behaviour checked and found right -------------------------------------------

def _own_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-own-loop")
    thread.start()
    return loop, thread


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_across_threads_an_ordered_map_delivers_the_head_of_a_batch_before_its_slow_item(
        ) -> None:
    """Thread driver (a Pool on a loop of the caller's): the outcomes before a
    slow item reach the consumer while that item still runs (``more``
    completions, recorded in order across threads)."""
    loop, thread = _own_loop()
    seen_head = asyncio.Event()   # set on the loop, by the consumer's thread

    async def fn(x: int) -> int:
        if x == 5:   # finishes only once the consumer has had 0..4
            await asyncio.wait_for(seen_head.wait(), 10)
        return x

    try:
        with conveyor.Pool(backend="asyncio", workers=8, loop=loop) as pool:
            out = []
            for r in pool.map(fn, range(16), batch=8):
                out.append(r)
                if r == 4:
                    loop.call_soon_threadsafe(seen_head.set)
            assert out == list(range(16))
    finally:
        _stop(loop, thread)


def test_across_threads_expiries_fail_each_item_once_even_when_the_coroutine_swallows_them(
        ) -> None:
    """Thread driver: ``expire`` crosses to the loop while other items of the
    same shared batch run; an item that swallows the cancellation and returns
    still fails with ``TaskTimeout``; no item runs twice; the stats add up."""
    loop, thread = _own_loop()
    ran: collections.Counter[int] = collections.Counter()

    async def fn(x: int) -> int:
        ran[x] += 1
        if x % 4 == 1:
            await asyncio.sleep(30)
        if x % 4 == 2:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                return -x
        return x

    try:
        with conveyor.Pool(backend="asyncio", workers=6, loop=loop) as pool:
            results = pool.map(fn, range(24), batch=8, timeout=0.3, on_error="return")
            out: list[object] = list(results)
            stats = results.stats
    finally:
        _stop(loop, thread)
    assert [o for o in out if not isinstance(o, TaskTimeout)] == \
        [x for x in range(24) if x % 4 in (0, 3)]
    assert sum(isinstance(o, TaskTimeout) for o in out) == 12
    assert (stats.done, stats.failed, stats.timed_out) == (12, 12, 12)
    assert sorted(ran) == list(range(24)) and set(ran.values()) == {1}


def test_retries_and_skips_of_items_in_shared_batches_count_right() -> None:
    """Failures reported out of order (``more``) are retried one by one, and
    skipped ones dropped, in order; each item runs once plus its retries."""
    ran: collections.Counter[int] = collections.Counter()

    async def fn(x: int) -> int:
        ran[x] += 1
        await asyncio.sleep(0.001 * ((x * 7) % 5))   # finish out of order
        if x % 6 == 1 and ran[x] == 1:
            raise ValueError(x)
        if x % 6 == 4:
            raise KeyError(x)
        return x

    results = conveyor.map(fn, range(60), workers=10, batch=12, retries=2, on_error="skip")
    assert list(results) == [x for x in range(60) if x % 6 != 4]
    s = results.stats
    assert (s.done, s.failed, s.skipped, s.retried) == (50, 10, 10, 30)
    assert sum(ran.values()) == 90
