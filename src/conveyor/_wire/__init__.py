"""What crosses a process boundary, for the process and dask backends alike.

::

    parent (process backend's supervisor,        worker (a process worker's main
    or the dask client)                          loop, or run_batch on a dask worker)

    Start, Task, Ask          --- records --->   run the items
    (function pickled once: functions.py,
     items: parent.py)
                              <--- records ---   Reply, Stolen, Logs (process),
                                                 TaskResult (dask); the outcomes
                                                 packed by pickles.pack_outcomes,
                                                 each failure a Failure record
    outcomes() rebuilds values and exceptions;
    one that cannot be rebuilt fails its own item

* ``records``: the named records and the framing (worker side and parent side).
* ``pickles``: pickling on both ends that a worker can load without the conveyor
  package: outcomes packed so that plain data stays in one pickle, items and
  results that cannot be rebuilt failing only their own item.
* ``functions``: a function (or initializer) pickled once, with an error
  naming what in it cannot be pickled.
* ``parent``: what only the parent does: pickling a batch's items (finding
  the one that cannot be pickled), and rebuilding outcomes and failures.

``records`` and ``pickles`` are loaded in process workers without the
conveyor package (see ``conveyor._worker.sibling``): they import only what
starts fast, and reach each other through ``sibling``.
"""
