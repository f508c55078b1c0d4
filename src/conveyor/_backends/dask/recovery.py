"""What the dask backend reports when the cluster, not the function, fails a task.

The backend decides nothing about running items again: it tells the engine
what happened, and the engine runs them again (counted in ``stats.rerun``,
``LOST_TRIES`` times at most; see ``_engine.policy``). What stays here is
what only a dask backend can know:

* **Lost results.** A result that dies with its worker before it is
  fetched: its items ran, their outcomes are lost (``Completion.rerun``).
  (Dask itself re-runs the task of a worker that dies while running it:
  conveyor does not see those.)
* **Killed workers and blame.** A task that kills ``allowed-failures``
  workers fails with ``KilledWorker``; dask blames every task the dead
  workers held, so a task that shared its worker may be innocent. Its items
  are reported as lost and marked as suspects (:class:`Suspects`): the
  engine runs them again, and the batch holding them runs *alone* on the
  cluster, with nothing beside it to blame. If it fails alone too, a task
  without items is run first (:class:`Probes`): if that kills its workers,
  the function or the initializer does, as each worker loads it, and every
  task of that function fails at once with ``WorkerCrashed`` from then on.
  Otherwise a batch of several items is reported with ``split``: the engine
  runs them one item per batch, each alone, and only the item that kills its
  worker fails, with ``WorkerCrashed``.
* **Stuck workers.** An expired task's worker, on a cluster conveyor started,
  is restarted (:func:`restart_worker`), as a worker process is killed on the
  process backend.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

from ...errors import WorkerCrashed
from .jobs import Job
from .remote import run_batch

__all__ = ["Probes", "Suspects", "failures", "restart_worker"]

_NO_ITEMS = pickle.dumps([], 5)
SUSPECTS = 4096   # suspects kept (the oldest go first): a run that stops leaves some


class Suspects:
    """Items whose task ``KilledWorker`` blamed: the next batch holding one runs alone.

    The engine sends the very same item objects again, so they are known by
    identity (each kept, so that its ``id`` stays its own until it is sent).
    An innocent batch holding one of them is only run alone: slower, never wrong.
    """

    def __init__(self) -> None:
        self._items: dict[int, Any] = {}

    def mark(self, items: Iterable[Any]) -> None:
        for x in items:
            self._items[id(x)] = x
        while len(self._items) > SUSPECTS:
            del self._items[next(iter(self._items))]

    def take(self, items: list[Any]) -> bool:
        """Whether ``items`` holds a suspect (each one found is forgotten)."""
        if not self._items:
            return False
        found = False
        for x in items:
            if self._items.get(id(x), self) is x:
                del self._items[id(x)]
                found = True
        return found


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
