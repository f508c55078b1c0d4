"""What a worker's death means for the jobs it held: which items failed, which run again.

A worker reports a batch's outcomes when the batch ends (and, for a long
batch, as it goes). If it dies during a batch (crash, timeout kill), the
item it was running fails, the items after it had not run and run
elsewhere, and the items *before* it had run but their outcomes died with
it: the completion says so (``Completion.rerun``) and the scheduler runs
them again. The slot (see ``worker``) says which item, or which phase
(``Pos``), the worker was in.
"""

from __future__ import annotations

import time
from typing import Any

from ..._wire.records import Pos
from ...errors import WorkerCrashed, WorkerInitError
from .._base import Completion, init_failure
from .jobs import Job
from .spawn import Proc, describe_exit

__all__ = ["died_loading", "fates"]


def died_loading(p: Proc, job: Job, running: bool, returncode: int | None,
                 initializer: object) -> Completion | None:
    """``job``'s completion if ``p`` died in the pool's initializer or unpickling
    ``job``'s function (the slot says which): every item fails, as each would
    on any worker. The initializer's: ``WorkerInitError`` (the initializer
    failed, as when it raises; the ``WorkerCrashed`` saying how the worker
    died is its cause); the function's: ``WorkerCrashed``."""
    q = p.q
    if q is None or job.batch.cancelled or p.reason is not None:
        return None
    how = describe_exit(returncode)
    if running and q[1] == Pos.FUNCTION:
        def error() -> BaseException:
            return WorkerCrashed(f"the worker process (pid {p.pid}) died while unpickling "
                                 f"this task's function: {how}",
                                 pid=p.pid, exitcode=returncode)
    elif not running and not p.ran and q[1] == Pos.INITIALIZER:
        crashed = WorkerCrashed(f"the worker process (pid {p.pid}) died in the pool's "
                                f"initializer: {how}", pid=p.pid, exitcode=returncode)
        init_error = WorkerInitError(f"the pool's initializer {initializer!r} killed "
                                     f"its worker process (pid {p.pid}): {how}")
        init_error.__cause__ = crashed

        def error() -> BaseException:
            return init_failure(init_error)
    else:
        return None
    n = job.size
    return Completion(job.batch, [error() for _ in range(n)], list(range(n)),
                      time.monotonic() - job.batch.started)


def fates(p: Proc, jobs: list[Job], running: bool, pos: int, returncode: int | None,
          ) -> tuple[list[Completion], list[Job]]:
    """The completions of the jobs ``p`` held when it died, and the jobs to send
    again (never started: each one is put first in line, in this order).

    ``running``: the first job had started, and the slot's ``pos`` is where
    it was (an item, or ``Pos.SENDING``: every item ran, its outcomes died on
    the way).
    """
    reports: list[Completion] = []
    again: list[Job] = []
    for i, job in enumerate(jobs):
        batch = job.batch
        batch.it = None   # break the cycle (see Supervisor._on_message)
        if i == 0 and running:
            if batch.cancelled:
                reports.append(Completion(batch, [], None, 0.0))
                continue
            if pos < 0:   # every item ran; it died sending their outcomes
                reports.append(_lost_sending(p, job, returncode))
                continue
            if p.reason is not None:
                error: BaseException = p.reason[1]
            else:
                error = WorkerCrashed(
                    f"the worker process (pid {p.pid}) running this task died: "
                    f"{describe_exit(returncode)}", pid=p.pid, exitcode=returncode)
            # Outcomes it sent before dying stand; the items after those
            # and before `pos` ran, but their outcomes died with it.
            got = list(batch.out or ())[:pos]
            failed = [e for e in batch.errs or () if e < len(got)]
            values: list[Any] = got + [None] * (pos - len(got))
            values.append(error)
            failed.append(pos)
            reports.append(Completion(batch, values, failed,
                                      time.monotonic() - batch.started,
                                      rerun=(len(got), pos), cause=error))
        elif batch.cancelled:
            reports.append(Completion(batch, [], None, 0.0))
        else:
            again.append(job)   # never started: it runs elsewhere
    return reports, again


def _lost_sending(p: Proc, job: Job, returncode: int | None) -> Completion:
    """Every item of ``job`` ran; the outcomes not received died with ``p``."""
    batch = job.batch
    got = list(batch.out or ())
    failed = [e for e in batch.errs or () if e < len(got)]
    lost = WorkerCrashed(
        f"the worker process (pid {p.pid}) died while sending this "
        f"task's outcome back: {describe_exit(returncode)}",
        pid=p.pid, exitcode=returncode)
    for i in range(len(got), min(job.size, batch.limit)):
        got.append(lost if i == len(got) else _crashed_copy(lost))
        failed.append(i)
    return Completion(batch, got, failed, time.monotonic() - batch.started)


def _crashed_copy(error: WorkerCrashed) -> WorkerCrashed:
    return WorkerCrashed(str(error), pid=error.pid, exitcode=error.exitcode)
