"""Adaptive batch size: what runs when.

Items travel to workers in batches (fewer hand-offs per item). The rule:

* A run starts with batches of **one** item (a ``Pool``'s later map of the
  same function starts at the size its earlier maps learned: ``prime``).
* After every batch, the per-item time is estimated (an exponentially weighted
  mean of batch busy time / items). The next batch size is the number of items
  that fill the backend's *target batch duration* (``batch_target``: 2 ms on
  threads and asyncio; 20 ms on processes, where a batch costs a pipe round
  trip and a pickle; 250 ms on dask, where a task costs milliseconds), but it
  at most **doubles** per step, so a few fast items cannot make one batch
  swallow a slow stretch of input; and never more than the backend's
  ``max_batch`` (4,096 items on threads and asyncio, 16,384 on processes and
  dask).
* A batch that took longer than twice the target shrinks the size at once to
  what the estimate says (one item for a task slower than the target): long
  tasks are never grouped, so the load stays balanced.
* The engine (``_engine.intake``) caps each batch further: at most
  ``remaining items / workers`` when the input has a length, so the tail of a
  run spreads over all workers; with ``window=`` given, at most
  ``window / (2 * workers)``. Where batches wait on the workers (dask: two per
  worker thread) the first cap is ``remaining items / (2 * workers)``, but no
  less than an eighth of the learned size (a task costs milliseconds there):
  the last batches shrink so the workers finish together.
* A batch stuck on one slow item hands over the rest: when workers are idle,
  the scheduler *steals* its unstarted items for them, and the results it has
  already finished are delivered at once (*harvest*; a worker process sends
  them every 50 ms once its batch has run 80 ms). One 10 s task does not hold
  100 short ones hostage.

* On asyncio (``shares_batches``) a batch is no worker's queue: free workers
  draw its items one by one, several at once. The size there is at least
  one item per 16 workers however slow the items (a batch's bookkeeping is
  shared by its items), at most an eighth of the window, and the tail rule
  does not apply.

``batch=<int>`` fixes the size instead (still capped by the window). With
``timeout=`` on a backend that cannot time the items of a batch one by one
(dask), batches hold one item.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

__all__ = ["REMEMBERED", "Batcher", "Memory"]

REMEMBERED = 64   # functions whose per-item time a Pool keeps (the oldest go first)


class Batcher:
    __slots__ = ("_per_item", "fixed", "max_size", "size", "target")

    def __init__(self, target: float, max_size: int, fixed: int | None = None) -> None:
        self.target = target
        self.max_size = max_size
        self.fixed = fixed
        self.size = fixed if fixed is not None else 1
        self._per_item: float | None = None

    @property
    def per_item(self) -> float | None:
        """The estimated seconds per item, once a batch has been observed."""
        return self._per_item

    def prime(self, per_item: float) -> None:
        """Start from an estimate learned earlier (a pool's earlier map of the same
        function) instead of from one item per batch."""
        if self.fixed is not None or per_item <= 0:
            return
        self._per_item = per_item
        self.size = max(1, min(int(self.target / per_item), self.max_size))

    def observe(self, n: int, busy: float) -> None:
        """Record that a batch of ``n`` items kept a worker busy ``busy`` seconds."""
        if self.fixed is not None or n <= 0:
            return
        per = busy / n
        if busy > 2 * self.target:
            # Too long: trust this batch alone, and shrink at once (to one item
            # for tasks slower than the target).
            self._per_item = per
            self.size = max(1, min(int(self.target / per), self.max_size))
            return
        est = self._per_item
        est = per if est is None else 0.7 * est + 0.3 * per
        self._per_item = est
        fits = int(self.target / est) if est > 0 else self.max_size
        self.size = max(1, min(fits, 2 * self.size, self.max_size))


class Memory:
    """The per-item time adaptive batching learned for each function, kept by a
    ``Pool`` for its next map of it: that map starts at the learned batch size
    instead of at one item (on dask, each of the ramp's small batches is a task).

    Keyed weakly on the user's function (a pool must not keep the functions it
    ran alive); a function that cannot be weakly referenced is not remembered.
    Runs of one pool may use it from several threads: each call is one
    dictionary operation.
    """

    __slots__ = ("_per_item",)

    def __init__(self) -> None:
        self._per_item: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def recall(self, fn: object) -> float | None:
        try:
            return self._per_item.get(fn)
        except TypeError:   # an unhashable callable, or one without weak references
            return None

    def remember(self, fn: object, per_item: float) -> None:
        memo = self._per_item
        try:
            memo[fn] = per_item
        except TypeError:
            return
        if len(memo) > REMEMBERED:
            with contextlib.suppress(RuntimeError, StopIteration, KeyError):
                del memo[next(iter(memo))]
