"""How results meet the habits users bring: ``str(stats)``."""

from __future__ import annotations

import re
import threading
from typing import Any

import conveyor

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
