"""Table 5's child side: what one scenario needs (its clock and workloads, the
lines it prints for the parent) and the helpers its scenarios share.

A scenario runs in a child process of its own
(``failure_behaviour.py --scenario NAME``) and prints JSON lines: events as
they happen, then one summary. The scenarios are in ``_failure_crash.py`` and
``_failure_hang.py``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import wait
from typing import Any

from workloads import crash_at, hang_at, inc

N, BAD = 8, 3
GOOD = N - 1
TASK_S = 0.2
TIMEOUT_S = 2.0


def emit(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


def exc_name(e: BaseException | None) -> str:
    return "none" if e is None else type(e).__name__


class Ctx:
    """What a scenario needs: its (scaled) workloads, and the clock of the call."""

    def __init__(self, scale: float) -> None:
        self.task_s = TASK_S * scale
        self.timeout = TIMEOUT_S * scale
        self.t0 = time.perf_counter()
        self.first_error: float | None = None

    def crash(self) -> Callable[[int], int]:
        return functools.partial(crash_at, bad=BAD, seconds=self.task_s)

    def hang(self) -> Callable[[int], int]:
        return functools.partial(hang_at, bad=BAD, seconds=self.task_s)

    def begin(self) -> None:
        """The work is about to be handed over: times are counted from here."""
        self.t0 = time.perf_counter()
        emit(event="call")

    def since(self) -> float:
        return time.perf_counter() - self.t0

    def error_seen(self) -> None:
        if self.first_error is None:
            self.first_error = self.since()

    def result(self) -> None:
        emit(event="result", t=round(self.since(), 3))

    def summary(self, *, seen: str | dict[str, int], good: int, usable: str, note: str = "",
                bad_ok: bool | None = None) -> None:
        """``bad_ok``: the failure was attributed to item BAD (None: cannot tell)."""
        detect = self.first_error if self.first_error is not None else self.since()
        emit(summary={"seen": seen, "detect_s": round(detect, 3), "good": good,
                      "usable": usable, "note": note, "bad_ok": bad_ok})

    def watch(self, fs: list[Any]) -> list[Any]:
        """Note the time the first of these futures fails: when the failure surfaced."""
        def on_done(f: Any) -> None:
            with contextlib.suppress(Exception):
                if f.exception(timeout=0) is not None:
                    self.error_seen()
        for f in fs:
            f.add_done_callback(on_done)
        return fs

    def wait(self, fs: list[Any], timeout: float) -> None:
        wait(self.watch(fs), timeout=timeout)

    def collect(self, fs: list[Any], timeout: float | None = None
                ) -> tuple[int, dict[str, int], bool | None]:
        """(good results, exception counts, did future BAD fail) of futures, in order.

        Call :meth:`watch` (or :meth:`wait`) as the futures are made, so the
        failure's time is when its future failed, not when it was looked at.
        """
        good, errors, bad_failed = 0, collections.Counter[str](), None
        for i, f in enumerate(fs):
            try:
                f.result(timeout=timeout)
                good += 1
                if i == BAD:
                    bad_failed = False
            except Exception as e:
                self.error_seen()
                errors[exc_name(e)] += 1
                if i == BAD:
                    bad_failed = True
        return good, dict(errors), bad_failed


def usable(fn: Callable[[], object]) -> str:
    try:
        fn()
        return "yes"
    except Exception as e:
        return f"no ({exc_name(e)})"


def drain(ctx: Ctx, results: Iterable[Any]) -> tuple[int, BaseException | None]:
    """Iterate results until an exception; (results got, the exception)."""
    got = 0
    try:
        for _ in results:
            got += 1
            ctx.result()
    except Exception as e:
        ctx.error_seen()
        return got, e
    return got, None


def drain_past_errors(ctx: Ctx, it: Iterator[Any]) -> tuple[int, dict[str, int]]:
    """Iterate, counting the errors and going on past them (pebble's map iterator)."""
    good, errors = 0, collections.Counter[str]()
    while True:
        try:
            next(it)
            good += 1
        except StopIteration:
            break
        except Exception as e:
            ctx.error_seen()
            errors[exc_name(e)] += 1
    return good, dict(errors)


# ---- conveyor, in both kinds of scenario ------------------------------------

def conveyor_map_return(ctx: Ctx, fn: Callable[[int], int], pool: Any = None,
                        timeout: float | None = None) -> tuple[int, dict[str, int], bool]:
    """Map with on_error='return'; (good, error counts, was item BAD the error)."""
    import conveyor

    opts: dict[str, Any] = {"on_error": "return", "timeout": timeout}
    ctx.begin()
    if pool is None:
        results = conveyor.map(fn, range(N), backend="process", workers=2, **opts)
    else:
        results = pool.map(fn, range(N), **opts)
    good, errors, bad = 0, collections.Counter[str](), False
    for i, r in enumerate(results):
        if isinstance(r, BaseException):
            ctx.error_seen()
            errors[exc_name(r)] += 1
            bad = bad or (i == BAD and conveyor.errors.item_index(r) == BAD)
        else:
            good += 1
            ctx.result()
    return good, dict(errors), bad


def conveyor_map_raise(ctx: Ctx, fn: Callable[[int], int],
                       timeout: float | None = None) -> tuple[int, str, bool]:
    import conveyor

    ctx.begin()
    got, err = drain(ctx, conveyor.map(fn, range(N), backend="process", workers=2,
                                       timeout=timeout))
    bad = err is not None and conveyor.errors.item_index(err) == BAD
    return got, exc_name(err), bad


def new_conveyor_map() -> str:
    import conveyor

    return "n/a (one-shot); a new map: " + usable(
        lambda: list(conveyor.map(inc, range(4), backend="process", workers=2)))
