"""Run statistics and the progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Counters", "ProgressBar", "Stats"]


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


class Counters:
    """Mutable counters owned by the scheduler's thread."""

    __slots__ = ("batches", "busy", "done", "ended", "failed", "retried", "skipped", "started",
                 "submitted", "timed_out")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.submitted = 0
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.timed_out = 0
        self.retried = 0
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
        )


class ProgressBar:
    """A tqdm bar counting items (``tqdm.auto``: a widget in notebooks)."""

    def __init__(self, total: int | None, desc: str | None, options: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        kwargs: dict[str, Any] = {"total": total, "desc": desc, "unit": "item",
                                  "dynamic_ncols": True, "smoothing": 0.1}
        kwargs.update(options)
        self._bar = tqdm(**kwargs)

    def update(self, n: int) -> None:
        self._bar.update(n)

    def close(self, failed: int) -> None:
        if failed:
            self._bar.set_postfix(failed=failed, refresh=False)
        self._bar.close()
