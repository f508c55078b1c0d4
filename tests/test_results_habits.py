"""How results meet the habits users bring: misspelt options, ``str(stats)``."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

import conveyor

# -- slips -------------------------------------------------------------------------


def test_chunksize_gets_did_you_mean_batch() -> None:
    async def af(x: int) -> int:
        return x

    async def amap_with_chunksize() -> None:
        conveyor.amap(af, [1], chunksize=4)  # type: ignore[call-overload]

    calls: list[Callable[[], object]] = [
        lambda: conveyor.map(abs, [1], chunksize=4),  # type: ignore[call-overload]
        lambda: asyncio.run(amap_with_chunksize()),
        lambda: conveyor.stream([1]).map(abs, chunksize=4),
    ]
    with conveyor.Pool(workers=1) as pool:
        calls.append(lambda: pool.map(abs, [1], chunksize=4))  # type: ignore[call-overload]
        for call in calls:
            with pytest.raises(TypeError, match=r"unexpected option chunksize=; did you mean "
                                                r"batch=\?"):
                call()
    # The drop-in executors' map has the stdlib's chunksize.
    with conveyor.ThreadPoolExecutor(2) as ex:
        assert list(ex.map(abs, [-1, -2], chunksize=2)) == [1, 2]


def test_unknown_options_on_pool_map_name_pool_map_and_its_options() -> None:
    with conveyor.Pool(workers=1) as pool:
        with pytest.raises(TypeError) as info:
            pool.map(abs, [1], orderd=False)  # type: ignore[call-overload]
        message = str(info.value)
        assert message.startswith("conveyor.Pool.map: unexpected option orderd=; did you "
                                  "mean ordered=?")
        assert "conveyor.Pool.map takes: ordered, window, batch," in message
        assert "backend" not in message and "workers" not in message
        for name in ("workers", "max_workers"):   # the stdlib's name: the same advice
            with pytest.raises(TypeError, match=rf"option {name}=; workers= belongs to the "
                                                r"pool: conveyor\.Pool\(workers=\.\.\.\)"):
                pool.map(abs, [1], **{name: 3})  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"option max_workers=; did you mean workers=\?"):
        conveyor.map(abs, [1], max_workers=3)  # type: ignore[call-overload]


def test_unknown_options_on_map_and_starmap_name_the_call_and_its_options() -> None:
    calls: dict[str, Callable[[], object]] = {
        "map": lambda: conveyor.map(abs, [1], retires=3),  # type: ignore[call-overload]
        "starmap": lambda: conveyor.starmap(abs, [[1]], retires=3),  # type: ignore[call-overload]
    }
    for name, call in calls.items():
        where = rf"conveyor\.{name}"
        with pytest.raises(TypeError, match=rf"^{where}: unexpected option retires=; did you "
                                            rf"mean retries=\? {where} takes: ordered, window, "):
            call()


# -- str(stats) --------------------------------------------------------------------


def _stats(**fields: Any) -> conveyor.Stats:
    base: dict[str, Any] = dict(
        backend="thread", workers=8, submitted=0, done=0, failed=0, skipped=0, timed_out=0,
        retried=0, in_flight=0, cancelled=0, wall_time=1.0, throughput=0.0,
        busy_fraction=0.0, batches=0)
    return conveyor.Stats(**{**base, **fields})


def test_stats_str_is_one_short_rounded_line() -> None:
    s = _stats(submitted=1008, done=1000, failed=3, retried=2, in_flight=5,
               wall_time=4.2049, throughput=238.4417, busy_fraction=0.91234)
    assert str(s) == ("1,000 done, 3 failed, 2 retried in 4.2 s (238/s) on 8 threads, "
                      "91% busy; 5 in flight.")
    assert repr(s).startswith("Stats(backend='thread', workers=8, submitted=1008, ")
    assert "wall_time=4.2049" in repr(s)   # the repr stays exact
    assert str(_stats(backend="asyncio", workers=1, done=7, failed=3, skipped=2,
                      timed_out=1, cancelled=4, wall_time=0.0421, throughput=237.5)) == (
        "7 done, 3 failed (2 skipped, 1 timed out) in 42 ms (238/s) on 1 coroutine, "
        "0% busy; 4 cancelled.")
    assert str(_stats(backend="process", workers=4, wall_time=3725, throughput=23.84)) == (
        "0 done, 0 failed in 1 h 2 min (23.8/s) on 4 processes, 0% busy.")
    assert str(_stats(backend="dask", workers=2, wall_time=61.2, throughput=2.384)) == (
        "0 done, 0 failed in 1 min 1 s (2.38/s) on 2 dask worker threads, 0% busy.")


def test_stats_str_of_a_real_run() -> None:
    tries: dict[int, int] = {}
    lock = threading.Lock()

    def f(x: int) -> int:
        with lock:
            tries[x] = tries.get(x, 0) + 1
        if x in (1, 2, 3):
            raise ValueError(x)
        return x

    results = conveyor.map(f, range(1000), workers=4, retries=1, backoff=0.001,
                           on_error="skip")
    assert len(list(results)) == 997
    text = str(results.stats)
    assert text.startswith("997 done, 3 failed (3 skipped), 3 retried in "), text
    assert re.fullmatch(r".* in \d+(\.\d)? m?s \([\d,.]+/s\) on 4 threads, \d+% busy\.",
                        text), text
