"""A batch on its way through the process backend, and how its completion is reported."""

from __future__ import annotations

import threading
from typing import Any

from .._base import Batch, Completion

__all__ = ["Job", "Unstarted", "deliver", "refused", "report_bug"]


class Job:
    """A batch's items, pickled, and what the supervisor knows of it."""

    __slots__ = ("batch", "bid", "fn_data", "items", "key", "sent", "size", "steal_reply",
                 "stolen")

    def __init__(self, bid: int, batch: Batch, key: int, fn_data: bytes,
                 items: bytes | list[bytes], size: int) -> None:
        self.bid = bid
        self.batch = batch
        self.key = key          # which function (see ProcessBackend._fn_key)
        self.fn_data = fn_data  # its pickle, sent to workers that do not hold it yet
        self.steal_reply = threading.Event()
        self.stolen: int | None = None
        self.items = items      # the pickled items: one pickle, or one per item
        self.size = size        # how many
        self.sent = False       # sent once: batch.on_start was called (then never again)


class Unstarted:
    """``batch.it`` of a batch sent to a worker: how many of its items wait."""

    __slots__ = ("job", "q")

    def __init__(self, q: memoryview[int] | None, job: Job) -> None:
        self.q = q      # its worker's slot (see worker)
        self.job = job

    def __iter__(self) -> Unstarted:
        return self

    def __next__(self) -> Any:
        raise StopIteration   # the items are in the worker

    def __length_hint__(self) -> int:
        q = self.q
        if q is None or q[0] != self.job.bid or self.job.steal_reply.is_set() or q[1] < 0:
            return 0   # not started, or in a phase outside its items (see records.Pos)
        return max(0, self.job.size - q[1] - 1)



def deliver(done: Completion) -> None:
    """Report ``done`` from the supervisor thread, which nothing may stop.

    A sink is conveyor's own (the scheduler's, a Pool's): one that raises is
    a bug, reported as an uncaught thread exception is, while the supervisor
    goes on serving every other batch.
    """
    try:
        done.batch.sink(done)
    except Exception as exc:
        report_bug(exc)


def report_bug(exc: BaseException) -> None:
    threading.excepthook(threading.ExceptHookArgs(
        (type(exc), exc, exc.__traceback__, threading.current_thread())))


def refused(batch: Batch) -> Completion | None:
    """Call ``batch.on_start`` (first send only): the completion to report if it must
    not run (a cancelled ``Pool.submit``), or None to run it. If the callback
    raises, the batch's items fail with that error instead of being lost."""
    on_start = batch.on_start
    if on_start is None:
        return None
    try:
        if on_start():
            return None
    except Exception as exc:
        n = batch.limit
        return Completion(batch, [exc] * n, list(range(n)), 0.0)
    return Completion(batch, [], None, 0.0)
