"""backend="asyncio": worker coroutines on an event loop.

::

    engine --submit (on the loop: direct;  --> deque of batches with items left
             else call_soon_threadsafe)          |  worker task 1..N (on the loop):
                                                 |  each free worker draws the next
                                                 |  item of the oldest batch
    engine <--batch.sink(Completion)-------------+  runs of outcomes, once per burst

A batch is no worker's queue: its items are drawn one at a time by whichever
worker is free, several at once. So 10,000 workers need no 10,000 batches,
a slow item holds up only itself, and nothing is ever stolen back. The
outcomes finish out of order; they are reported in runs of consecutive
positions once per burst of the loop (``Completion.more``), and a last
completion ends the batch (``draw.Draw``).

On conveyor's shared loop and under ``amap`` the run's core runs on the loop
too (the engine's event-loop driver: ``event_loop``), so submitting and
reporting are direct calls; otherwise a dispatcher thread submits across
threads.

The loop is the caller's for ``conveyor.amap``, one given as ``loop=``
(``Pool(backend="asyncio", loop=...)``), or else conveyor's own loop, shared
by every sync map and pool of the process (``conveyor._loop``: a helper
thread, so a sync map works even when the calling thread already runs a loop,
as in a Jupyter cell). The backend never stops a loop it did not start. Worker
tasks start lazily, up to ``workers``: a new batch wakes (or starts) up to
one idle worker per item.

Timeouts and cancellation are real: the worker task awaiting the item is
cancelled. The worker tells an expiry (the item fails with ``TaskTimeout``,
the worker goes on) from a cancellation of its batch (that item does not
finish, and nothing more of the batch is drawn) by a flag set on the loop before the
cancel. A coroutine that blocks the loop (``time.sleep`` inside ``async def``)
cannot be cancelled by anyone; use the thread backend for such code.
"""

from .backend import AsyncioBackend

__all__ = ["AsyncioBackend"]
