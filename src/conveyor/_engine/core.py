"""The core: the sans-I/O state machine of one run.

It decides (what to pull, what to batch and submit, what to hand out, what to
retry, what is overdue) and never waits or sleeps. A driver feeds it events
and asks it what time it next wants to be woken::

    driver ─step()──────▶ ┌────────────── Core ───────────────┐
           ─completed(c)─▶ │ Intake   input, window, rate, size │─submit, cancel,─▶ Backend
           ─stop(error)──▶ │ Policy   retries, error policy     │ steal, expire,
           ◀─wake_at(now)─ │ Timers   deadlines, steal, harvest │ running, harvest
           ◀─ordering.out─ │ Ordering groups, reorder, hand-out │
           ◀─end────────── └────────────────────────────────────┘

Units. Items are pulled from the input in *groups* (one adaptive batch
each), the unit of ordering. A group is first submitted as one batch; what a
batch did not cover (stolen tail, abandoned worker, crash) is submitted
again as a smaller batch of the same group, and a retried item as a batch of
one. Items that ran but whose outcomes were lost (``Completion.rerun``: a
dead process worker, a dask result lost with its worker or a task dask
blamed) are submitted again too, counted in ``stats.rerun``, one item per
batch if the backend asks (``split``), and failed with ``WorkerCrashed``
once lost more than ``LOST_TRIES`` times (``_lost_outcomes``). Backends
report; only the core decides what runs again.

Ending. ``end`` is set exactly once: after the last result, or carrying the
exception to raise; the driver hands it over after the results before it.
``stop()`` (early exit, an exception in the caller, Ctrl-C) stops the input,
cancels queued and running batches (``Backend.cancel``), and the core is
finished once every batch in flight has reported.

The core calls only the backend's non-blocking methods. Batches report
through ``sink`` (the driver's), and the driver calls :meth:`completed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .._backends._base import Backend, Batch, Completion, underlying
from .._batching import Memory
from .._outbox import End
from .._progress import Counters, Stats
from .._source import Source
from ..errors import PoolClosed
from .clock import MONOTONIC, Clock
from .intake import Intake
from .options import Options
from .ordering import Group, Ordering
from .policy import LOST_TRIES, Policy, lost_for_good
from .timers import Timers

__all__ = ["Core"]


class Core:
    """One map's decisions (see the module docstring)."""

    def __init__(self, fn: Callable[[Any], Any], items: Iterator[Any] | Source,
                 total: int | None, backend: Backend, options: Options, *,
                 sink: Callable[[Completion], None], clock: Clock = MONOTONIC,
                 memory: Memory | None = None) -> None:
        self.fn = fn
        self.backend = backend
        self.options = options
        self.clock = clock
        self.sink = sink
        self.counters = Counters()
        #: A Pool's memory of the batch size learned per function (None: a
        #: one-off map, whose backend ends with it).
        self.memory = memory
        self.intake = Intake(items, total, backend, fn, options, memory)
        self.ordering = Ordering(options.ordered, self.intake.window)
        self.policy = Policy(options, self.counters, backend.name, clock)
        self.timers = Timers(backend, options.timeout, self)
        self.in_flight: dict[Batch, None] = {}   # insertion-ordered set
        #: Batches in flight whose items' outcomes were lost before: how often.
        self._lost: dict[Batch, int] = {}
        self.stopping = False       # cancelled or ended: drain in-flight work
        self.end: End | None = None   # set once: the run's end, for the driver to hand over
        #: Called when every worker has a batch and more are being prepared
        #: (the thread driver releases the GIL there, so the workers start).
        self.pause: Callable[[], None] | None = None
        self._remembered = False
        self._rebalance_at = 0.0    # when to look at the batches in flight again
        self._starved = False       # ... or when the run runs out of new work

    # -- events ------------------------------------------------------------------
    def step(self) -> None:
        """Hand out what is ready, then pull and submit what the window allows."""
        if not self.stopping:
            self.emit()   # first: what it hands out (or skips) frees window room
            self.fill()

    def stop(self, error: BaseException | None = None) -> None:
        """Cancel the run; ``error``, if given, is the end the consumer sees."""
        self._end(error)   # the end, unless one was set before
        self.cancel()

    def cancel(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.intake.source is not None:
            self.intake.source.close()
        self.policy.retries.clear()
        for b in list(self.in_flight):
            self.backend.cancel(b)
        self._end(None)

    def drain(self) -> None:
        """The run is ending: cancel what is in flight (then wait for it to report)."""
        self.stopping = True
        self.policy.retries.clear()
        for b in list(self.in_flight):
            self.backend.cancel(b)

    def finished(self) -> bool:
        """Nothing is left to do (the end is set, unless the run stopped)."""
        if self.stopping:
            return not self.in_flight
        if self.in_flight or self.policy.retries:
            return False
        if not self.intake.closed or not self.ordering.settled:
            return False
        self._end(self.intake.error)
        return True

    def wake_at(self, now: float) -> float:
        """Expire overdue items, steal tails for idle workers; the clock time at
        which the core wants :meth:`step` again (``inf``: only on an event)."""
        wake = self.timers.expire_overdue(now, bool(self.in_flight))
        if self.stopping:
            return wake
        wake = min(wake, self.policy.retries.next_due())
        intake = self.intake
        if intake.wants_start():
            wake = min(wake, intake.next_start)
        if self.in_flight:
            # A look at every batch in flight: not at every step, but when the
            # oldest may have run long, or the input has just ended.
            starved = intake.closed or intake.window.held() >= intake.limit()
            if now >= self._rebalance_at or starved != self._starved:
                self._starved = starved
                idle = intake.workers - len(self.in_flight)
                self._rebalance_at = self.timers.rebalance(
                    now, self.in_flight, idle, starved, self.ordering.is_head,
                    self._harvest, self._submit, self._is_stopping)
            wake = min(wake, self._rebalance_at)
        return wake

    def stats(self) -> Stats:
        return self.counters.snapshot(self.backend.name, self.intake.workers)

    # -- submitting ----------------------------------------------------------------
    def _submit(self, items: list[Any], group: Group, start: int, attempt: int = 0,
                lost: int = 0) -> None:
        b = Batch(self.fn, items, self.sink, owner=self, group=group, start=start,
                  attempt=attempt, timed=self.options.timeout is not None)
        self._young()
        self.in_flight[b] = None
        if lost:
            self._lost[b] = lost
        self.counters.batches += 1
        self.backend.submit(b)

    def fill(self) -> None:
        """Submit the retries that are due, then new batches while the window has room."""
        intake = self.intake
        clock = self.clock
        retries = self.policy.retries
        if retries:
            now = clock.now()
            while retries.next_due() <= now and intake.rate_allows(now):
                r = retries.pop_due(now)
                assert r is not None
                self._submit([r.item], r.group, r.pos, r.attempt)
        if intake.closed:
            return
        backend = self.backend
        # A backend may follow a cluster that grows or shrinks (dask)
        workers = backend.workers
        per_worker = backend.batches_per_worker
        most = None if per_worker is None else per_worker * workers
        plan = intake.plan(workers, most)
        # Hot loop (one turn per batch): locals only.
        in_flight = self.in_flight
        open_group = self.ordering.open
        counters = self.counters
        fn = self.fn
        sink = self.sink
        submit = backend.submit
        timed = self.options.timeout is not None
        rated = self.options.rate is not None
        pause = self.pause
        n0 = len(in_flight)
        short = plan.refill   # the first turn waits for that much room; later ones fill it
        intake.window.want_room = False   # set again by room() if still short of room
        while True:
            room = intake.room(plan, short, bool(in_flight))
            if not room:
                return
            short = 1
            if most is not None and len(in_flight) >= most:
                return   # a completion wakes us
            items = intake.pull(plan, room, clock.now() if rated else 0.0)
            if not items:
                return
            n = len(items)
            g = open_group(intake.pulled - n, items)
            counters.submitted += n
            counters.batches += 1
            b = Batch(fn, items, sink, owner=self, group=g, timed=timed)
            in_flight[b] = None
            submit(b)
            if n0 == len(in_flight) - 1:
                self._young()
            if intake.done:
                return
            if pause is not None and len(in_flight) == workers:
                pause()

    # -- completions ---------------------------------------------------------------
    def completed(self, c: Completion) -> None:
        """A batch reported (see ``Completion``: outcomes of a prefix of its items)."""
        b = c.batch
        if c.more:   # some outcomes of a batch that still runs (``shares_batches``)
            if self.stopping:
                self._count_discarded(c)
            else:
                self._absorb(b, c.offset, c.values, c.errors)
            return
        self.in_flight.pop(b, None)
        self.timers.forget(b)
        lost = self._lost.pop(b, 0)   # times its items' outcomes were lost before
        # A worker is free, and a batch waiting for one may have started: look
        # at the batches in flight again (at most once per `after`).
        self._young()
        self.counters.busy += c.busy
        if self.stopping:
            self._count_discarded(c)
            return
        if c.lost:
            self._raise(PoolClosed(
                f"the {self.backend.name} workers stopped before this map finished (the pool "
                "was closed, or the event loop running them ended)"))
            return
        at = c.offset
        n = at + len(c.values)
        if n < b.limit and not b.cancelled:  # the rest did not run: submit it again
            self._again(b, n, b.limit, lost, c.split)
        done = max(b.harvested, at)
        if c.rerun is not None:
            c, done = self._lost_outcomes(c, done, lost)
        # A batch whose last completion carries no values (shared: its last
        # item to finish was not its last) still teaches the batch size.
        if not c.errors and done == at and not b.harvested and n:
            batcher = self.intake.batcher
            size = batcher.size
            batcher.observe(n, c.busy)
            # The Pool keeps the estimate for its next map of fn (a weak
            # mapping: costly per batch): told when the size it gives changes,
            # and not by a batch under half the size it was given (the input's
            # end cut it short): a few items' time, stretched by one wait for
            # the GIL, would start the next map at a handful of items.
            memory = self.memory
            if memory is not None and batcher.per_item is not None \
                    and batcher.fixed is None and 2 * n >= size \
                    and (batcher.size != size or not self._remembered):
                self._remembered = True
                memory.remember(underlying(self.fn), batcher.per_item)
        if n <= done:
            return
        skip = done - at   # outcomes at the start of values that were recorded before
        values = c.values if not skip else c.values[skip:]
        errors = c.errors if not skip or not c.errors else [p - skip for p in c.errors
                                                          if p >= skip]
        self._absorb(b, done, values, errors)

    def _lost_outcomes(self, c: Completion, done: int, lost: int) -> tuple[Completion, int]:
        """Items ``c.rerun`` ran, but their outcomes were lost: run them again
        (counted in ``stats.rerun``), or, lost once too often, fail them with
        ``WorkerCrashed``. Returns the completion left to absorb, and how many
        of its outcomes are taken care of."""
        b = c.batch
        assert c.rerun is not None
        a, z = max(c.rerun[0], done), c.rerun[1]
        if z <= a:
            return c, done
        if lost >= LOST_TRIES:   # lost once too often: failures, absorbed with the rest
            values = list(c.values)
            values[a:z] = [lost_for_good(lost + 1, c.cause) for _ in range(a, z)]
            errors = sorted({*(c.errors or ()), *range(a, z)})
            return Completion(b, values, errors, c.busy), done
        if not b.cancelled:
            self._again(b, a, z, lost + 1, c.split)
            self.counters.rerun += z - a
        if a > done:
            self._absorb(b, done, c.values[done:a],
                         [p - done for p in c.errors if done <= p < a] if c.errors else None)
        return c, z

    def _again(self, b: Batch, a: int, z: int, lost: int, split: bool) -> None:
        """Submit ``b.items[a:z]`` again: one batch, or (``split``) one per item."""
        if not split:
            self._submit(b.items[a:z], b.group, b.start + a, b.attempt, lost)
            return
        for i in range(a, z):
            self._submit(b.items[i:i + 1], b.group, b.start + i, b.attempt, lost)

    def _count_discarded(self, c: Completion) -> None:
        """Outcomes that arrive after the run stopped still count in the stats
        (not the placeholders of outcomes that were lost)."""
        n = len(c.values) - c.batch.harvested
        if c.rerun is not None:
            n -= max(0, c.rerun[1] - max(c.rerun[0], c.batch.harvested))
        if n > 0:
            failures = sum(1 for p in c.errors if p >= c.batch.harvested) if c.errors else 0
            self.counters.done += n - failures
            self.counters.failed += failures

    def _absorb(self, b: Batch, offset: int, values: list[Any],
                errors: list[int] | None) -> None:
        """Record outcomes of ``b.items[offset:offset + len(values)]``."""
        counters = self.counters
        n = len(values)
        g: Group = b.group
        final = n
        clean = True
        raised: list[int] = []
        if errors:
            v = self.policy.triage(b, offset, values, errors, raised)
            if v.special:
                g.special = True
            if v.fatal is not None and (g.fatal is None or v.fatal < g.fatal):
                g.fatal = v.fatal
            final -= v.retrying
            counters.done += final - v.failures
            clean = not (v.retrying or g.special)
            if v.fatal is not None:
                self._on_fatal(g)
        else:
            counters.done += n
        error = self.ordering.record(g, b.start + offset, values, final, clean, raised)
        if error is not None:
            self._raise(error)

    def _harvest(self, b: Batch) -> None:
        """Take the outcomes a long-running batch has so far, to deliver them now."""
        got = self.backend.harvest(b)
        if got is None:
            return
        values, errors = got
        offset = b.harvested
        b.harvested = offset + len(values)
        self._absorb(b, offset, values, [p - offset for p in errors] or None)

    def emit(self) -> None:
        error = self.ordering.emit()
        if error is not None:
            self._raise(error)

    # -- failing -------------------------------------------------------------------
    def _on_fatal(self, g: Group) -> None:
        """A failure will be raised: pull nothing more, cancel what comes after it."""
        self.intake.halt()
        if self.options.ordered:
            for b in list(self.in_flight):
                if b.group.seq > g.seq:
                    self.backend.cancel(b)
            self.policy.retries.keep_before(self.policy.fatal_index)

    def _raise(self, error: BaseException) -> None:
        self._end(error)
        self.cancel()

    def _end(self, error: BaseException | None) -> None:
        if self.end is None:
            self.end = End(error)

    def _young(self) -> None:
        """A batch starts (or may start) now: look at it once it may have run long."""
        at = self.clock.now() + self.timers.after
        if at < self._rebalance_at:
            self._rebalance_at = at

    def _is_stopping(self) -> bool:
        return self.stopping

