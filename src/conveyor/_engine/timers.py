"""Timers: deadlines, stealing and harvesting, and when to look again.

* Deadlines: with ``timeout=``, the backend says which item each worker runs
  and since when (``Backend.running``); an item past its deadline is expired
  (``Backend.expire``), once. Also while the run is stopping: a cancelled run
  waits for the items that are running, and a hung one must not make that
  wait endless.
* A batch running long (four batch targets): the outcomes it has finished are
  delivered at once (*harvest*, when they are next in line), and when workers
  are idle with nothing else to do, its unstarted items are taken back
  (*steal*) and spread over them.

Each returns the clock time at which it wants to look again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .._backends._base import Backend, Batch
from ..errors import TaskTimeout

__all__ = ["Timers"]


class Timers:
    def __init__(self, backend: Backend, timeout: float | None, owner: object) -> None:
        self.backend = backend
        self.timeout = timeout
        self.owner = owner          # the batches whose deadlines are ours
        self.after = 4 * backend.batch_target   # a batch running this long is looked at
        self.poll = max(self.after, 0.05)       # ... and again this often
        self._expired: dict[Batch, set[int]] = {}

    def forget(self, b: Batch) -> None:
        """``b`` has completed."""
        self._expired.pop(b, None)

    def expire_overdue(self, now: float, busy: bool) -> float:
        """Stop the items that overran ``timeout``; returns the next deadline."""
        timeout = self.timeout
        if timeout is None or not busy:
            return math.inf
        wake = now + timeout
        for r in self.backend.running():
            b = r.batch
            if b.owner is not self.owner:
                continue
            deadline = r.since + timeout
            if deadline > now:
                wake = min(wake, deadline)
                continue
            seen = self._expired.setdefault(b, set())
            if r.pos in seen:
                continue
            seen.add(r.pos)
            index = b.group.base + b.start + r.pos
            self.backend.expire(r, TaskTimeout(
                f"the task for item #{index} ran longer than timeout={timeout:g} s",
                index=index, seconds=timeout))
        return wake

    def rebalance(self, now: float, in_flight: dict[Batch, None], idle: int, starved: bool,
                  is_head: Callable[[Any], bool], harvest: Callable[[Batch], None],
                  submit: Callable[[list[Any], Any, int, int], None],
                  stopping: Callable[[], bool]) -> float:
        """Batches running long: deliver what they have finished (``harvest``, when
        ``is_head(group)``), and hand their unstarted items to ``idle`` workers when
        the run is ``starved`` of other work (steal). Returns when to look again."""
        backend = self.backend
        after = self.after
        poll = self.poll
        can_steal = backend.can_steal and starved
        wake = math.inf
        for b in list(in_flight):
            if stopping():
                break
            it = b.it
            if b.cancelled or b.limit < 2:
                continue
            if it is None:
                # No worker has taken it yet, and none says when it does: look
                # again once it may have run long, or it is never harvested.
                wake = min(wake, now + after)
                continue
            if now - b.started < after:
                wake = min(wake, b.started + after)
                continue
            out = b.out
            if out is not None and len(out) > b.harvested and is_head(b.group):
                harvest(b)
            hint: int = it.__length_hint__()  # type: ignore[attr-defined]
            if can_steal and idle > 0 and hint > 0:
                k = backend.steal(b)
                if k is not None:
                    tail = b.items[k:b.limit]
                    b.limit = k
                    pieces = min(idle, len(tail))
                    step = -(-len(tail) // pieces)
                    for i in range(0, len(tail), step):
                        submit(tail[i:i + step], b.group, b.start + k + i, b.attempt)
                    idle -= pieces
            if out is not None and len(out) < b.limit:
                wake = min(wake, now + poll)
        return wake
