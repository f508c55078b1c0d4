"""backend="process": worker processes that conveyor starts and supervises itself.

::

    scheduler --submit--> pending jobs --pipe--> worker process 1..N
       ^                     |  (pickled batch)    | for x in items: fn(x)
       |               supervisor thread <--pipe---+ (pickled outcomes)
       +--batch.sink--  (selector on result pipes and pidfds: results, deaths,
                         kills for timeouts and cancellation, replacements)

Not ``concurrent.futures.ProcessPoolExecutor``: one worker that dies breaks
the whole executor, and a hung task cannot be stopped. Here each worker is
watched on its own: a death fails only the task it was running
(``WorkerCrashed``), and a worker whose task overruns ``timeout=`` is killed
with its whole process group and replaced.

**Start method.** Each worker is a fresh interpreter (``subprocess`` with
``sys.executable``), not a ``fork`` of the parent: forking a process that
runs threads (conveyor's dispatcher, the user's) can copy a lock in its held
state and deadlock the child. Unlike multiprocessing's ``spawn`` and
``forkserver``, the worker never re-imports the parent's ``__main__``, so a
script without the ``if __name__ == "__main__"`` guard, and a notebook, work:
functions and arguments travel by cloudpickle (lambdas, closures, functions
defined in ``__main__`` are sent by value); multiprocessing's queues, locks,
shared memory and Manager proxies get there as with ``ProcessPoolExecutor``
(see ``_mpshare``: initargs are pickled as for a process being started,
their descriptors passed to every worker). A worker loads only
``conveyor/_worker.py``, ``_wire/records.py``, ``_wire/pickles.py`` and
``worker.py`` (not the conveyor package), so it starts in about the time of a
bare interpreter. Workers start lazily, when a batch is waiting.

**What is re-run.** A worker reports a batch's outcomes when the batch ends.
If it dies during a batch (crash, timeout kill), the item it was running fails,
the items after it had not run and run elsewhere, and the items *before* it
had run but their outcomes died with the worker: they run again. So a task
runs at least once, and twice only when its worker dies in the same batch
after it (adaptive batching keeps batches near ``batch_target`` long).
Faults in pickles re-run nothing: a batch's items travel in one pickle (one
memo: fast), and if a worker cannot unpickle it, or dies doing so, none has
run and the batch goes again one pickle per item, so the bad one fails alone
(timed batches always go so: unpickling an item is part of its task).
Results travel in one pickle too; if the parent cannot unpickle it, the
worker, which kept them, sends them again one by one (see ``worker``).

**Timeouts and crash attribution** without a message per item: a shared
memory page per worker holds (batch id, item position, start time), written by
the worker before each item (see ``worker``).

**The parts.** ``backend`` (the ``Backend`` the scheduler calls: pickling,
then jobs), ``supervisor`` (the thread that watches the workers: replies,
deaths, cancellation kills, replacing workers, ``max_tasks_per_worker``),
``deaths`` (what a death means for the jobs a worker held), ``spawn``
(starting a fresh interpreter, and the parent's end of its pipes), ``jobs``
(a batch on its way), ``worker`` (the worker's main loop, which runs in the
worker process). What crosses the pipes is ``conveyor._wire``.
"""

from __future__ import annotations

from ..._wire.functions import pickle_function
from ..._wire.parent import check_arguments
from .backend import ProcessBackend

__all__ = ["ProcessBackend", "check_arguments", "pickle_function"]
