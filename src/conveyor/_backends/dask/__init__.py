"""``backend="dask"``: batches run as tasks on a dask.distributed cluster.

The engine's scheduler keeps every policy (the window, ordering, retries, the
error policy, timeouts' deadlines, rate, progress); this module only turns a
:class:`Batch` into one dask task and its result into a :class:`Completion`.

* **Streaming.** ``client.map`` wants the whole input and makes every task up
  front. Here the scheduler submits batches as its window allows, at most two
  per worker thread, and this backend puts them on the cluster (see
  ``_ready``); the rest wait here, where cancelling them costs nothing.
* **One task per batch.** Dask pays about a millisecond and a half per task,
  and a batch's round trip (client -> scheduler -> worker -> client) several
  more, so adaptive batching aims at ``batch_target`` (250 ms) per batch. The task
  carries the pickled function, the pickled items and the initializer as
  bytes (cloudpickle, the same encoding as the process backend), and returns
  the outcomes as bytes, packed as the process worker packs them (the wire
  format is ``conveyor._wire``): dask never has to pickle a user's object
  itself, and a failing item, result or exception fails only its own task.
* **Lost workers.** Dask re-runs the task of a worker that dies while
  running it (at least once: its items may run twice). What dask does not
  re-run, this backend reports and the engine decides (counted in
  ``stats.rerun``, a few times at most): a result that died with its worker
  before it was fetched, and a task that failed with ``KilledWorker``. Dask
  blames every task a dead worker held, so such a task's batch runs again
  *alone* on the cluster; if it kills its workers alone too, the engine runs
  its items one per batch, each alone, and only the item that kills its
  worker fails, with ``WorkerCrashed`` (see ``recovery``).
* **Retries** stay conveyor's (``retries=``, ``retry_on=``, backoff), not
  dask's ``retries=``: dask retries a whole task on any exception, conveyor
  retries the items that failed with the exceptions asked for.
* **Timeouts.** Dask cannot stop a running task. An overdue item fails with
  ``TaskTimeout`` at once; on a cluster conveyor started, the worker running it
  is restarted (as a worker process is killed on the process backend), on a
  cluster of yours it keeps its thread until it returns (as on threads), and
  its slot is not reused meanwhile.
* **Cancellation.** Queued batches are dropped; batches on the cluster are
  cancelled there (``client.cancel``); a cluster conveyor started is closed.

**The parts.** ``backend`` (the ``Backend`` the scheduler calls), ``remote``
(what runs on the dask workers), ``recovery`` (lost and killed workers, stuck
ones restarted), ``receiver`` (the thread where finished tasks are handled),
``jobs`` (a batch on the cluster), ``cluster`` (where the client comes from)
and ``helper`` (the module the LocalCluster conveyor starts runs in, as
``python -m conveyor._backends.dask.helper``).
"""

from __future__ import annotations

from .backend import DaskBackend
from .cluster import INSTALL, import_distributed
from .remote import run_batch

__all__ = ["INSTALL", "DaskBackend", "import_distributed", "run_batch"]
