"""Adaptive batch size.

The rule (also in the README):

* A run starts with batches of **one** item.
* After every batch, the per-item time is estimated (an exponentially weighted
  mean of batch busy time / items). The next batch size is the number of items
  that fill the backend's *target batch duration* (2 ms for threads and
  asyncio), but it at most **doubles** per step, so a few fast items cannot
  make one batch swallow a slow stretch of input.
* A batch that took longer than twice the target shrinks the size at once to
  what the estimate says (one item for a task slower than the target): long
  tasks are never grouped, so the load stays balanced.
* A batch never holds more than ``remaining items / workers`` (when the input
  has a length) nor more than ``window / (2 * workers)``, so the tail of a run
  spreads over all workers.
* And if a worker is stuck on one slow item while others are idle, the
  scheduler *steals* the unstarted rest of its batch (see ``_scheduler``):
  one 10 s task cannot hold the short tasks queued behind it hostage.

``batch=<int>`` fixes the size instead (still capped by the window).
"""

from __future__ import annotations

__all__ = ["Batcher"]


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
