"""A batch on the dask cluster (``Job``), and what a task's result means for
its items (``outcomes_of``)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ... import _logs
from ..._wire import parent
from ..._wire.records import Ended, Status
from ...errors import NotPicklable
from .._base import Batch, init_failure, initializer_failed

__all__ = ["Job", "log_index", "outcomes_of", "take_ready"]


class Job:
    """A batch and its dask future."""

    __slots__ = ("alone", "batch", "done", "future", "items", "n", "restarting", "sent",
                 "since", "worker_stuck")

    def __init__(self, batch: Batch, items: bytes, n: int, *, alone: bool = False) -> None:
        self.batch = batch
        self.items = items        # pickled
        self.n = n
        self.future: Any = None
        self.since = 0.0
        self.done = False         # reported (or expired): a late result is ignored
        self.worker_stuck = False  # expired while running: keeps its slot until it ends
        self.alone = alone        # suspected of killing workers: runs with nothing beside it
        self.sent = False         # sent once (Pool.submit's future is running from then on)
        self.restarting = False   # expired: its worker is being restarted


def log_index(job: Job, pos: int) -> int | None:
    """The input index of the item a record was logged in (its position in the task)."""
    return _logs.item_index(job.batch, pos)


def outcomes_of(job: Job, ended: Ended, data: bytes,
                initializer: object) -> tuple[list[Any], list[int]]:
    """The values (exceptions rebuilt) and failed positions of ``job``'s task.

    A task whose items did not unpickle together on the worker
    (``Status.ITEMS_FAILED``) is a job of one item here (larger ones are
    reported for the engine to split): ``NotPicklable``, as on the process backend. An
    initializer that failed: ``WorkerInitError`` per item, as everywhere.
    """
    got = parent.outcomes(data, 0, False, "this process (the dask client)")
    assert got is not None   # (not whole: it never is None)
    values, errors = got
    if ended.status == Status.ITEMS_FAILED:
        cause = values[0]
        name = type(job.batch.items[0]).__name__
        values = [NotPicklable(f"this item, a {name}, could not be unpickled on the dask "
                               f"worker: {type(cause).__name__}: {cause}", type_name=name)]
        values[0].__cause__ = cause
    if ended.status == Status.INIT_FAILED:
        first = values[0] if values and isinstance(values[0], BaseException) else \
            RuntimeError("the initializer failed")
        cause = initializer_failed(initializer, first)
        values = [init_failure(cause) for _ in values]
    return values, errors


def take_ready(pending: deque[Job], running: dict[Job, None], workers: int) -> list[Job]:
    """Pending jobs to send now (lock held): they are moved to ``running``.

    Two tasks per worker thread may be on the cluster: the second waits on
    its worker, so the worker never idles for a round trip between tasks.
    A timed task is sent only to a free thread (its clock starts as it is
    sent). A task under suspicion runs *alone*: when a worker dies, dask
    counts the death against every task that worker held, so a task that
    ends as ``KilledWorker`` runs once more with nothing beside it before
    conveyor believes it.
    """
    out: list[Job] = []
    live = [j for j in running if not j.worker_stuck]   # stuck ones wait on no one
    if any(j.alone for j in live):
        return out
    busy = len(running)
    now = time.monotonic()
    while pending:
        job = pending[0]
        if job.alone:
            if live or out:
                break
            limit = busy + 1
        else:
            limit = workers if job.batch.timed else 2 * workers
        if busy >= limit:
            break
        pending.popleft()
        running[job] = None
        job.since = now   # running() may report it before _send gets to it
        busy += 1
        out.append(job)
        if job.alone:
            break
    return out
