"""Run statistics and the progress bar."""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["REFRESH_EVERY", "Counted", "Counters", "ProgressBar", "Stats", "import_tqdm"]

T = TypeVar("T")


@dataclass(frozen=True)
class Stats:
    """A snapshot of a run's counters (``Results.stats``). Items, not batches.

    ``submitted``: items taken from the input so far. ``done``: items that
    produced a result. ``failed``: items whose final outcome is an error (after
    retries), whatever the error policy; ``skipped`` counts those of them that
    ``on_error="skip"`` dropped, and ``timed_out`` those that failed with
    ``TaskTimeout``. ``retried``: retry attempts made. ``in_flight``: items
    taken but not yet finished; ``cancelled``: items taken that never finished
    because the run was stopped early (what ``in_flight`` becomes once the run
    has ended). ``wall_time``: seconds since the run started
    (until it ended, once it has). ``throughput``: finished items per second
    of wall time. ``busy_fraction``: the time workers spent running this run's
    tasks divided by ``wall_time * workers`` (1.0: every worker busy all along).
    ``batches``: how many batches the items travelled in (adaptive batching at
    work: far fewer than the items for tiny tasks, one per item for long ones).
    ``rerun``: items run again because their outcome was lost, not because
    they failed: a worker process died after running them, before their
    outcomes came back, or a dask worker died holding a task's result or
    killed with a task beside it. Such an item ran more than once (at least
    once, see the guarantees); ``retried`` does not count it.

    ``str(stats)`` is one short line with rounded numbers, e.g. ``1,000 done,
    3 failed, 2 retried in 4.2 s (238/s) on 8 threads, 91% busy; 5 in
    flight.``; the ``repr`` has every field, unrounded.
    """

    backend: str
    workers: int
    submitted: int
    done: int
    failed: int
    skipped: int
    timed_out: int
    retried: int
    in_flight: int
    cancelled: int
    wall_time: float
    throughput: float
    busy_fraction: float
    batches: int
    rerun: int = 0

    def __str__(self) -> str:
        failed = f"{self.failed:,} failed"
        why = [f"{n:,} {what}" for n, what in ((self.skipped, "skipped"),
                                               (self.timed_out, "timed out")) if n]
        if why:
            failed += f" ({', '.join(why)})"
        parts = [f"{self.done:,} done", failed]
        if self.retried:
            parts.append(f"{self.retried:,} retried")
        if self.rerun:
            parts.append(f"{self.rerun:,} re-run")
        text = (f"{', '.join(parts)} in {_seconds(self.wall_time)} "
                f"({_rate(self.throughput)}/s) on {_workers(self.backend, self.workers)}, "
                f"{self.busy_fraction:.0%} busy")
        if self.in_flight:
            text += f"; {self.in_flight:,} in flight"
        if self.cancelled:
            text += f"; {self.cancelled:,} cancelled"
        return text + "."


_WORKER_NOUNS = {"thread": ("thread", "threads"), "process": ("process", "processes"),
                 "asyncio": ("coroutine", "coroutines"),
                 "dask": ("dask worker thread", "dask worker threads")}


def _workers(backend: str, n: int) -> str:
    one, many = _WORKER_NOUNS.get(backend, (f"{backend} worker", f"{backend} workers"))
    return f"{n:,} {one if n == 1 else many}"


def _seconds(t: float) -> str:
    """``0.42`` -> "420 ms", ``4.24`` -> "4.2 s", ``125`` -> "2 min 5 s", hours as "1 h 2 min"."""
    if t < 0.9995:
        return f"{t * 1000:.0f} ms" if t >= 0.001 else "< 1 ms"
    if t < 59.95:
        return f"{t:.1f} s" if t < 9.95 else f"{t:.0f} s"
    m, sec = divmod(round(t), 60)
    if m < 60:
        return f"{m} min {sec} s" if sec else f"{m} min"
    h, m = divmod(m, 60)
    return f"{h} h {m} min" if m else f"{h} h"


def _rate(per_second: float) -> str:
    """Three significant digits at most: "238", "12,345", "23.8", "2.38", "0.004"."""
    if per_second >= 100:
        return f"{per_second:,.0f}"
    if per_second >= 10:
        return f"{per_second:.1f}"
    return f"{per_second:.3g}" if per_second >= 0.001 else "0"


class Counters:
    """Mutable counters owned by the scheduler's thread."""

    __slots__ = ("batches", "busy", "done", "ended", "failed", "rerun", "retried", "skipped",
                 "started", "submitted", "timed_out")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.submitted = 0
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.timed_out = 0
        self.retried = 0
        self.rerun = 0
        self.busy = 0.0
        self.batches = 0

    def snapshot(self, backend: str, workers: int) -> Stats:
        end = self.ended if self.ended is not None else time.perf_counter()
        wall = max(end - self.started, 1e-9)
        finished = self.done + self.failed
        unfinished = max(0, self.submitted - finished)
        ended = self.ended is not None
        return Stats(
            backend=backend, workers=workers, submitted=self.submitted, done=self.done,
            failed=self.failed, skipped=self.skipped, timed_out=self.timed_out,
            retried=self.retried, in_flight=0 if ended else unfinished,
            cancelled=unfinished if ended else 0,
            wall_time=wall, throughput=finished / wall,
            busy_fraction=min(1.0, self.busy / (wall * workers)), batches=self.batches,
            rerun=self.rerun,
        )


class ProgressBar:
    """A tqdm bar over a run's counters (``tqdm.auto``: a widget in notebooks).

    It counts items *finished* (``done + failed`` of the run's counters: a
    final outcome, after retries), not items handed to the consumer: every
    result the consumer has is finished, so the bar is never behind what the
    caller has seen; it measures the workers (rate and ETA), whatever the
    consumer does; and it reaches its total also when ``on_error="skip"``
    hands some out never. Failures show as a ``failed=N`` postfix as they come.

    The engine does nothing for the bar per item or batch: it counts in
    ``Counters`` as it always does, and the process's refresher thread
    (``_Refresher``) brings every open bar up to date every ``REFRESH_EVERY``
    seconds while it has changed. tqdm's own throttling (``mininterval``,
    dynamic ``miniters``) would drop the updates of a burst, and nothing
    would draw them until the next update, seconds later or never; so the
    bar is made with ``mininterval=0, miniters=1`` and the refresher is the
    throttle (options given by the user still win). Drawing happens on the
    refresher's thread, never on the dispatcher's, so a slow terminal or
    notebook slows no task.
    """

    def __init__(self, counters: Counters, total: int | None, desc: str | None,
                 options: dict[str, Any]) -> None:
        """Draw the bar (at 0 of ``total``) and have the refresher keep it current.

        Raises ``ImportError`` when tqdm is not installed, and ``TypeError``
        when tqdm refuses ``options`` (the user's ``progress={...}``).
        """
        tqdm = import_tqdm("progress=True")
        kwargs: dict[str, Any] = {"total": total, "desc": desc, "unit": "item",
                                  "dynamic_ncols": True, "smoothing": 0.1,
                                  "mininterval": 0, "miniters": 1}
        kwargs.update(options)
        try:
            self._bar = tqdm(**kwargs)
        except (TypeError, KeyError) as exc:   # TqdmKeyError is a KeyError
            raise TypeError(f"progress={options!r}: tqdm does not take these options "
                            f"({exc}); the dict's items are passed to tqdm(...) as "
                            "keyword arguments") from None
        self._counters = counters
        self._lock = threading.Lock()   # the refresher against close()
        self._failed = 0
        self._closed = False
        self.error: BaseException | None = None   # what stopped the refreshing
        if not self._bar.disable:   # disable=True, or None on a non-terminal
            _REFRESHER.add(self)

    def refresh(self) -> None:
        """Show the counters now if they changed (the refresher's thread)."""
        with self._lock:
            if self._closed:
                return
            counters = self._counters
            failed = counters.failed
            finished = counters.done + failed
            bar = self._bar
            if failed != self._failed:
                self._failed = failed
                bar.set_postfix(failed=failed, refresh=False)
            # bar.n != bar.last_print_n: an update tqdm did not draw (a user's
            # mininterval or delay); update(0) draws it once that allows.
            if finished != bar.n or bar.n != bar.last_print_n:
                bar.update(finished - bar.n)

    def close(self, *, complete: bool) -> None:
        """Draw the final counts and close the bar (the dispatcher, as the run ends).

        ``complete``: the run read its input to the end, so the items finished
        are all there were: a total that said otherwise (a file counted
        beforehand, a ``__len__`` that was wrong) is corrected.
        """
        _REFRESHER.remove(self)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                counters = self._counters
                bar = self._bar
                if counters.failed:
                    bar.set_postfix(failed=counters.failed, refresh=False)
                bar.n = counters.done + counters.failed
                if complete and bar.total is not None and bar.total != bar.n:
                    bar.total = bar.n
                bar.close()   # draws the final state (or clears it, with leave=False)
            except Exception as exc:   # the run's results matter more than its bar
                self.error = self.error or exc
        if self.error is not None:
            # In the dispatcher's thread, as the run ends: a warning turned into
            # an error (-W error) must not keep the run from ending.
            with contextlib.suppress(Exception):
                warnings.warn(f"conveyor: the progress bar stopped showing progress: it "
                              f"failed with {self.error!r}", RuntimeWarning, stacklevel=2)


class Counted(Generic[T]):
    """An iterable whose number of items is known, though it is no collection
    (a pipeline stage's input after a stage of known output, the lines of a
    file counted beforehand): ``len()`` gives a run's bar its total.

    The run reads it through an input pump, like any iterable that is not a
    built-in collection.
    """

    __slots__ = ("_items", "_n")

    def __init__(self, items: Iterable[T], n: int) -> None:
        self._items = items
        self._n = n

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return self._n


#: Seconds between two looks of the refresher at the open bars.
REFRESH_EVERY = 0.1


class _Refresher:
    """One daemon thread per process that refreshes every open bar.

    It runs while there is a bar open (``conveyor-progress``) and ends when the
    last one closes, so a process without a bar has no such thread. One
    thread for all bars: a pipeline's stages, or maps running side by side,
    cost one wake-up every ``REFRESH_EVERY`` seconds together.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._bars: dict[ProgressBar, None] = {}   # insertion-ordered set
        self._running = False

    def add(self, bar: ProgressBar) -> None:
        with self._cond:
            self._bars[bar] = None
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="conveyor-progress",
                                 daemon=True).start()

    def remove(self, bar: ProgressBar) -> None:
        with self._cond:
            self._bars.pop(bar, None)
            if not self._bars:
                self._cond.notify()   # end the thread now, not at its next look

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                if self._bars:
                    cond.wait(REFRESH_EVERY)
                if not self._bars:
                    self._running = False
                    return
                bars = list(self._bars)
            for bar in bars:
                try:
                    bar.refresh()
                except Exception as exc:   # e.g. its file was closed: stop refreshing it
                    bar.error = exc        # (close() warns)
                    self.remove(bar)


_REFRESHER = _Refresher()


def import_tqdm(where: str) -> Any:
    """``tqdm.auto.tqdm``; an ``ImportError`` saying what to do where tqdm is missing."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(f"{where}: the progress bar needs tqdm, which is not installed; "
                          "install it (pip install tqdm) or leave progress out") from None
    return tqdm
