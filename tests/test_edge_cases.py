"""Edge cases around the contracts: odd exceptions, odd inputs, odd timing."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import conveyor
from conveyor.errors import PoolClosed, item_index

from .conftest import BackendName, Sleepers, task


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10 cannot tell a task's own "
                    "CancelledError from a cancellation (no Task.cancelling()); documented")
def test_coroutine_raising_cancelled_error_itself_is_a_failure() -> None:
    async def f(x: int) -> int:
        if x == 3:
            raise asyncio.CancelledError()
        return x

    out: list[Any] = list(conveyor.map(f, range(6), workers=2, on_error="return"))
    assert out[:3] == [0, 1, 2]
    assert out[4:] == [4, 5]
    assert isinstance(out[3], asyncio.CancelledError)


def test_retry_of_an_earlier_item_survives_a_later_failure() -> None:
    """Ordered: like map(), item 0's result (after its retry) comes before item 1's error."""
    gate = threading.Event()
    tries: dict[int, int] = {}

    def f(x: int) -> str:
        tries[x] = tries.get(x, 0) + 1
        if x == 0:
            gate.wait(10)          # fails only after item 1 has failed for good
            if tries[0] == 1:
                raise KeyError("transient")
            return "ok0"
        gate.set()
        raise ValueError("permanent")

    got = []
    with pytest.raises(ValueError, match="permanent"):
        for v in conveyor.map(f, range(2), workers=2, batch=1, retries=3, retry_on=KeyError,
                              backoff=0.001):
            got.append(v)
    assert got == ["ok0"]


def test_after_a_failure_later_items_do_not_start() -> None:
    release = threading.Event()
    started: list[int] = []
    lock = threading.Lock()

    def f(x: int) -> int:
        with lock:
            started.append(x)
        if x == 0:
            release.wait(10)
            return x
        if x == 1:
            raise ValueError("fatal")
        release.wait(10)
        return x

    results = conveyor.map(f, range(20), workers=2, batch=1, window=20)
    threading.Timer(0.3, release.set).start()
    with pytest.raises(ValueError, match="fatal"):
        list(results)
    # item 2 may have been running on the second worker; nothing after it starts
    assert set(started) <= {0, 1, 2}


def test_input_error_keeps_the_items_before_it(backend: BackendName) -> None:
    def gen() -> Iterator[int]:
        yield from range(6)
        raise OSError("input broke")

    got = []
    with pytest.raises(OSError, match="input broke") as info:
        for v in conveyor.map(task(backend, lambda x: x), gen(), backend=backend, batch=4):
            got.append(v)
    assert got == list(range(6))
    assert "after 6 items" in "".join(getattr(info.value, "__notes__", []))


def test_returned_exception_is_a_value_in_unordered_mode() -> None:
    tries: dict[int, int] = {}

    def f(x: int) -> Any:
        tries[x] = tries.get(x, 0) + 1
        if x == 0 and tries[x] == 1:
            raise KeyError("transient")
        if x == 1:
            return ValueError("a value, not a failure")
        return x

    out = list(conveyor.map(f, range(2), workers=1, batch=2, ordered=False, retries=1,
                            backoff=0))
    assert len(out) == 2
    assert 0 in out


@dataclasses.dataclass(frozen=True)
class Frozen(Exception):
    code: int


@pytest.mark.parametrize("policy", ["raise", "return", "skip"])
def test_exception_that_refuses_attributes(policy: Any) -> None:
    def f(x: int) -> int:
        if x == 2:
            raise Frozen(42)
        return x

    if policy == "raise":
        with pytest.raises(Frozen):
            list(conveyor.map(f, range(5), workers=2, on_error=policy))
    else:
        out = list(conveyor.map(f, range(5), workers=2, on_error=policy))
        assert len(out) == (5 if policy == "return" else 4)


def test_raise_does_not_wait_past_the_timeout_for_a_hung_call() -> None:
    release = threading.Event()

    def f(x: int) -> int:
        if x == 0:
            release.wait(30)
            return x
        raise ValueError("boom")

    t0 = time.monotonic()
    with pytest.raises(ValueError, match="boom"):
        list(conveyor.map(f, range(2), workers=2, batch=1, timeout=0.5, ordered=False))
    assert time.monotonic() - t0 < 5
    release.set()


def test_close_from_another_thread_ends_the_loop() -> None:
    release = threading.Event()

    def f(x: int) -> int:
        release.wait(0.5)
        return x

    results = conveyor.map(f, range(100), workers=2)
    done = threading.Event()

    def consume() -> None:
        for _ in results:
            pass
        done.set()

    t = threading.Thread(target=consume)
    t.start()
    results.close()
    release.set()
    assert done.wait(10)
    t.join(10)


def test_closing_the_pool_under_a_map_raises_in_the_consumer() -> None:
    release = threading.Event()
    pool = conveyor.Pool(workers=2)
    results = pool.map(lambda x: (release.wait(0.05), x)[1], range(100))
    it = iter(results)
    next(it)
    pool.close()
    release.set()
    with pytest.raises(PoolClosed):
        list(it)


def test_huge_range_and_a_failing_len() -> None:
    for v in conveyor.map(lambda x: x, range(2**64)):
        assert v == 0
        break

    class Weird:
        def __iter__(self) -> Iterator[int]:
            return iter([1, 2, 3])

        def __len__(self) -> int:
            raise NotImplementedError("no len")

    assert list(conveyor.map(lambda x: x, Weird())) == [1, 2, 3]


def test_slow_input_does_not_stall_results_or_timeouts() -> None:
    more = threading.Event()

    def pages() -> Iterator[int]:
        yield 0
        more.wait(10)      # the next page takes long to fetch
        yield 1

    t0 = time.monotonic()
    with conveyor.map(lambda x: x, pages(), workers=2) as results:
        assert next(iter(results)) == 0
        assert time.monotonic() - t0 < 5
    more.set()


def test_each_item_gets_its_own_init_error() -> None:
    def init() -> None:
        raise RuntimeError("no db")

    with conveyor.Pool(workers=1, initializer=init) as pool:
        out: list[Any] = list(pool.map(lambda x: x, range(4), on_error="return"))
    assert [item_index(e) for e in out] == [0, 1, 2, 3]
    assert len({id(e) for e in out}) == 4


@pytest.mark.parametrize("ordered", [True, False])
def test_skip_with_a_window_of_one(ordered: bool) -> None:
    def f(x: int) -> int:
        if x == 1:
            raise ValueError("skip me")
        return x

    out = list(conveyor.map(f, range(5), workers=1, window=1, on_error="skip",
                            ordered=ordered))
    assert sorted(out) == [0, 2, 3, 4]


class HardStop(BaseException):
    pass


def test_base_exception_from_the_input_reaches_the_caller() -> None:
    def gen() -> Iterator[int]:
        yield 1
        yield 2
        raise HardStop("input failed hard")

    got = []
    with pytest.raises(HardStop):
        for v in conveyor.map(lambda x: x, gen()):
            got.append(v)
    assert got == [1, 2]


def test_input_generator_is_closed_when_the_run_stops_early() -> None:
    closed = threading.Event()

    def gen() -> Iterator[int]:
        try:
            yield from range(10**6)
        finally:
            closed.set()

    for v in conveyor.map(lambda x: x, gen()):
        if v == 3:
            break
    assert closed.wait(10)


def test_amap_results_outliving_their_loop_do_not_strand_the_run() -> None:
    import gc

    from .conftest import wait_no_conveyor_threads

    async def main() -> None:
        going = asyncio.Event()

        async def af(x: int) -> int:
            going.set()
            await asyncio.sleep(0.001)
            return x

        kept.append(conveyor.amap(af, range(10**6), workers=5))
        await asyncio.wait_for(going.wait(), 10)   # the run is under way
        raise RuntimeError("the caller failed before consuming")

    kept: list[object] = []   # the results outlive their loop (as in a traceback)
    with pytest.raises(RuntimeError, match="before consuming"):
        asyncio.run(main())
    with pytest.warns(conveyor.errors.UnreadResultsWarning):   # never read, indeed
        kept.clear()
    gc.collect()
    assert not wait_no_conveyor_threads()


def test_expiry_and_cancel_together_leave_the_worker_cancellable() -> None:
    """An expiry and a close() landing together must not wedge the worker's flags."""
    async def hang(x: int) -> int:
        await asyncio.sleep(30)
        return x

    with conveyor.Pool("asyncio", workers=1) as pool:
        for trial in range(15):
            r = pool.map(hang, range(1), timeout=0.1, on_error="return")
            # The race under test: close() right around the expiry (a timing,
            # not a way of waiting for something).
            time.sleep(0.1 + 0.0005 * trial)
            r.close()
            sleepers = Sleepers(1)
            r2 = pool.map(sleepers.fn(), range(1))
            assert sleepers.all_started.wait(10)
            t0 = time.monotonic()
            r2.close()
            assert time.monotonic() - t0 < 1, f"trial {trial}"


def test_nothing_more_is_read_after_a_failure_to_raise() -> None:
    release = threading.Event()
    read: list[int] = []

    def gen() -> Iterator[int]:
        for i in range(10_000):
            read.append(i)
            yield i

    def f(x: int) -> int:
        if x == 0:
            release.wait(10)
            return x
        if x == 1:
            raise ValueError("fatal")
        return x

    results = conveyor.map(f, gen(), workers=2, batch=1, window=200)
    with pytest.raises(ValueError, match="fatal"):
        it = iter(results)
        threading.Timer(0.3, release.set).start()
        list(it)
    assert len(read) <= 202


def test_stats_settle_after_a_stop() -> None:
    results = conveyor.map(lambda x: x, range(1000), workers=2, window=16)
    for v in results:
        if v == 5:
            break
    results.close()
    s = results.stats
    assert s.in_flight == 0
    assert s.done + s.failed + s.cancelled == s.submitted


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10 cannot tell a shutdown's "
                    "cancel merged with an expiry's (no Task.cancelling()); documented")
def test_loop_shutdown_during_an_expiry_does_not_hang_asyncio_run() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def f(x: int) -> int:
            started.set()
            await asyncio.sleep(10)
            return x

        kept.append(conveyor.amap(f, range(20), workers=1, timeout=0.05,
                                  on_error="return"))
        await asyncio.wait_for(started.wait(), 10)   # item 0 is running
        # The situation under test, not a wait: block the loop past item 0's
        # deadline, so that its expiry is queued when the loop shuts down.
        time.sleep(0.15)  # noqa: ASYNC251
        raise RuntimeError("main fails")   # asyncio.run now cancels every task

    kept: list[object] = []   # the results stay referenced while the loop shuts down
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="main fails"):
        asyncio.run(main())
    assert time.monotonic() - t0 < 5
    with pytest.warns(conveyor.errors.UnreadResultsWarning):   # never read, indeed
        kept.clear()


def test_async_input_generator_is_closed_after_a_failure() -> None:
    closed = asyncio.Event()

    def f(x: int) -> int:
        if x == 1:
            raise ValueError(x)
        return x

    async def gen() -> Any:
        try:
            n = 0
            while True:
                n += 1
                await asyncio.sleep(0)
                yield n
        finally:
            closed.set()

    async def main() -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - the task's own ValueError(1)
            async for _ in conveyor.amap(f, gen(), window=100, workers=2):
                pass
        await asyncio.wait_for(closed.wait(), 10)

    asyncio.run(main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10 cannot tell an input's "
                    "own CancelledError from a cancellation (no Task.cancelling()); documented")
def test_async_input_raising_cancelled_error_is_its_failure() -> None:
    async def f(x: int) -> int:
        return x * 10

    async def gen() -> Any:
        yield 1
        yield 2
        raise asyncio.CancelledError()   # e.g. it awaited something that was cancelled

    async def main() -> list[int]:
        got = []
        with pytest.raises(asyncio.CancelledError):
            async for r in conveyor.amap(f, gen()):
                got.append(r)
        return got

    assert asyncio.run(main()) == [10, 20]


# Closing a loop without shutting down its async generators is the misuse under
# test; Python (3.13+) reports the abandoned generator as it is collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine method 'aclose':RuntimeWarning")
def test_a_closed_event_loop_does_not_strand_the_run() -> None:
    import gc

    from .conftest import wait_no_conveyor_threads

    async def f(x: int) -> int:
        await asyncio.sleep(0.2)
        return x

    async def main() -> int:
        async for r in conveyor.amap(f, range(100), workers=4):
            return r
        return -1

    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(main()) == 0
    loop.close()   # closed without cancelling its tasks or closing async generators
    gc.collect()
    assert not wait_no_conveyor_threads(10)
