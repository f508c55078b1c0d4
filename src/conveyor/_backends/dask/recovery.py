"""What the dask backend does when the cluster, not the function, fails a task.

* **Lost results.** Dask re-runs the task of a worker that dies (at least
  once: its items may run twice). A result that dies with its worker before
  it is fetched is run again here, ``LOST_TRIES`` times at most.
* **Killed workers.** A task that kills ``allowed-failures`` workers fails with
  ``KilledWorker``; dask blames every task the dead workers held, so conveyor
  runs it once more alone on the cluster, and if it fails again a batch of
  several items is split into one task per item (each run alone,
  :func:`split`), so that only the item that kills its worker fails, with
  ``WorkerCrashed``. Before splitting, a task without items is run
  (:class:`Probes`): if that kills its workers too, the function or the
  initializer does, as each worker loads it, and every task of that function
  fails at once from then on.
* **Stuck workers.** An expired task's worker, on a cluster conveyor started,
  is restarted (:func:`restart_worker`), as a worker process is killed on the
  process backend.
"""

from __future__ import annotations

import pickle
from typing import Any

from ..._wire.parent import pickle_items
from ...errors import WorkerCrashed
from .._base import Completion
from .jobs import Job, Split
from .remote import run_batch

__all__ = ["LOST_TRIES", "Probes", "failures", "restart_worker", "settled", "split"]

LOST_TRIES = 3         # times a task whose result died with its worker is run again
_NO_ITEMS = pickle.dumps([], 5)


class Probes:
    """For each function: None (tasks without items run), or the ``KilledWorker``
    of a task without items: the function or the initializer kills its workers."""

    def __init__(self, killed_worker: type[BaseException]) -> None:
        self._killed_worker = killed_worker
        self.verdicts: dict[str, BaseException | None] = {}

    def poison(self, key: str) -> BaseException | None:
        """Why no task of function ``key`` can run, or None."""
        return self.verdicts.get(key)

    def is_verdict(self, exc: BaseException | None) -> bool:
        return any(exc is verdict for verdict in self.verdicts.values() if verdict)

    def run(self, client: Any, token: str, key: str, fn_data: bytes,
            init: bytes | None) -> BaseException | None:
        """Run a task without items (alone: the caller's job keeps its slot) and
        keep the verdict. Raises what the cluster raises otherwise (cancelled,
        closing: no verdict)."""
        verdict: BaseException | None = None
        try:
            client.submit(run_batch, token, key, fn_data, init, _NO_ITEMS, pure=False).result()
        except self._killed_worker as exc:
            verdict = exc
        self.verdicts[key] = verdict
        return verdict


def split(job: Job, *, alone: bool) -> tuple[Split, list[Job]]:
    """``job``'s items as one job each (``alone``: each to run with nothing beside it)."""
    items = job.batch.items[:job.n]   # the originals: they pickled together before
    parts = Split(job.batch, job.n)
    for i, x in enumerate(items):
        payload, _, _ = pickle_items([x])
        assert payload is not None   # the batch pickled as a whole
        sub = Job(job.batch, payload, 1, parent=parts, pos=i)
        sub.alone = alone   # one at a time: the item that kills its worker is the one
        parts.jobs.append(sub)
    return parts, list(parts.jobs)


def failures(job: Job, exc: BaseException | None, probes: Probes, with_init: bool,
             killed_worker: type[BaseException]) -> list[BaseException]:
    """The errors of ``job``'s items when its dask task failed (not the function)."""
    errors = []
    loads = " or the initializer" if with_init else ""
    for _ in range(job.n):
        if probes.is_verdict(exc):
            e: BaseException = WorkerCrashed(
                f"the dask workers die as they load the function{loads}, even for a "
                f"task without items: no task of that function can run: {exc}")
        elif isinstance(exc, killed_worker):
            e = WorkerCrashed(
                "the dask workers running this task died each time it ran, also alone "
                f"on the cluster (dask gave up after its allowed-failures): {exc}")
        else:
            e = WorkerCrashed(f"the dask cluster could not run this task: "
                              f"{type(exc).__name__}: {exc}")
        e.__cause__ = exc
        errors.append(e)
    return errors


def settled(parts: Split, *, lost: bool) -> Completion | None:
    """A split batch that stops early: its finished prefix, once (lock held)."""
    if parts.left <= 0:
        return None
    prefix = 0
    while prefix in parts.finished:
        prefix += 1
    parts.left = 0
    errors = sorted(p for p in parts.errors if p < prefix)
    return Completion(parts.batch, parts.values[:prefix], errors, parts.busy, lost=lost)


def restart_worker(client: Any, future: Any) -> None:
    """Restart the worker running ``future``'s task (returns once it is back)."""
    try:
        key = future.key
        where = [addr for addr, keys in client.processing().items() if key in keys]
        client.cancel([future], force=True)
        if where:
            client.restart_workers(where, raise_for_error=False)
    except Exception:   # the cluster is closing: its workers go with it
        pass
