"""The engine: one scheduler per map, running in its own dispatcher thread.

::

    input iterable ──islice──▶ ┌──────────── dispatcher thread ─────────────┐
                               │ groups + batches (adaptive size, window)   │
                               │ retries (backoff heap), rate, timeouts,    │──submit──▶ Backend
                               │ steal, error policy, reorder, stats, bar   │◀─Completion── (sink)
                               └────────────┬─────────────────▲─────────────┘
                                   outbox (lists of results)  │ events: completions,
                                            ▼                 │ "consumer took n", stop
                                  Results / AsyncResults  ────┘
                                  (the caller's thread or event loop)

Everything that is *policy* lives here (and in its mixin ``_outcomes``, which
applies retries and the error policy and hands results out in order);
backends hold mechanism only.

Units. Items are pulled from the input in *groups* (one adaptive batch each),
the unit of ordering: the reorder buffer is keyed by group number, never by
item. A group is first submitted as one batch; what a batch did not cover
(stolen tail, abandoned worker, crash) is submitted again as a smaller batch of
the same group, and a retried item as a batch of one. Hand-offs between
threads move lists: per item there is only the call of ``fn`` and storing its
outcome.

Window. ``outstanding`` counts items taken from the input and not yet handed
to the consumer (running, queued, waiting to be retried, waiting to be
reordered, or waiting in the outbox). No item is pulled while it is at the
window, so memory is bounded and a slow consumer slows the producers.

Ending. Exactly one end marker reaches the outbox: after the last result, or
carrying the exception to raise. ``close()`` (early exit, an exception in the
caller, Ctrl-C) stops the input at once, cancels queued and running batches
(``Backend.cancel``) and waits for their completions before the thread ends.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any

from ._backends._base import Backend, Batch, Completion, join
from ._batching import Batcher
from ._outbox import End, Outbox
from ._outcomes import Group, Outcomes, add_note
from ._progress import Counters, ProgressBar, Stats
from ._source import CHUNK_POLL, Source
from .errors import PoolClosed, TaskTimeout, item_index

__all__ = ["Options", "Run"]

_NONE: Any = object()    # next(iterator, _NONE): the iterator is exhausted
_STOP = object()         # event: the consumer asked the run to stop
_INPUT = object()        # event: an async input has items again

FLUSH_EVERY = 0.001     # seconds: most often results are handed over while busy
POLL_EVERY = 1.0        # seconds without news before asking the backend for lost work
DEFAULT_WINDOW_CAP = 65_536


@dataclass(frozen=True)
class Options:
    """Checked, normalised options of one run (see ``_api`` for their meaning)."""

    ordered: bool = True
    window: int | None = None
    batch: int | None = None          # None: adaptive
    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: float = 0.1
    on_error: str = "raise"
    rate: float | None = None
    progress: bool = False
    progress_options: tuple[tuple[str, Any], ...] = ()
    desc: str | None = None


class _Stop:
    """Event: stop the run and raise ``error`` in the consumer."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Run(Outcomes):
    """One map: owns the dispatcher thread, the outbox, and (maybe) a backend."""

    def __init__(self, fn: Callable[[Any], Any], items: Iterator[Any] | Source,
                 total: int | None, backend: Backend, *, owns_backend: bool,
                 options: Options) -> None:
        self.fn = fn
        self.backend = backend
        self.options = options
        self.outbox = Outbox()
        self.events: SimpleQueue[Any] = SimpleQueue()
        self.counters = Counters()
        # The input: an iterator over a built-in collection, read here, or a
        # Source whose pump reads it elsewhere (see _source).
        self._source = items if isinstance(items, Source) else None
        self._it: Iterator[Any] = iter(()) if isinstance(items, Source) else items
        self._total = total
        self._owns_backend = owns_backend
        self._workers = backend.workers
        self._batcher = Batcher(backend.batch_target, backend.max_batch, options.batch)
        if options.rate is not None or (options.timeout is not None
                                        and not backend.times_items):
            self._batcher = Batcher(backend.batch_target, 1, 1)
        else:   # a Pool's earlier map of fn learned its batch size: start there
            known = backend.recall(fn)
            if known is not None:
                self._batcher.prime(known)
        # dispatcher-thread state
        self._seq = itertools.count()
        self._next_emit = 0
        self._groups_made = 0
        self._ready: dict[int, Group] = {}
        self._live: dict[int, Group] = {}       # ordered mode: groups not handed out
        self._head_dirty = False
        self._in_flight: dict[Batch, None] = {}   # insertion-ordered set
        self._retry_heap: list[tuple[float, int, Group, int, Any, int]] = []
        self._retry_tie = itertools.count()
        self._expired: dict[Batch, set[int]] = {}
        self._outstanding = 0           # items taken, minus those dropped (not delivered)
        self.consumed = 0               # items the consumer took (written by the consumer)
        self._want_room = False         # the window is full: tell me when items are taken
        self._room_at = 0               # ... once `consumed` reaches this
        self._out: list[list[Any]] = []  # chunks not yet handed to the consumer
        self._last_flush = 0.0
        self._pulled = 0
        self._input_done = False
        self._input_error: BaseException | None = None
        self._halt_input = False        # a fatal failure: pull nothing more
        self._fatal_index: float = math.inf   # input index of the failure to raise
        self._stopping = False          # cancelled or ended: drain in-flight work
        self._ended = False             # end marker sent
        self._next_start = 0.0          # rate limiting
        self._bar: ProgressBar | None = None
        if options.progress:
            self._bar = ProgressBar(self.counters, total, options.desc,
                                    dict(options.progress_options))
        self.keep: object = None        # what must live as long as the run (its Pool)
        self._exit_callbacks: list[Callable[[], None]] = []
        self._exit_lock = threading.Lock()
        self._exited = False
        self._thread = threading.Thread(target=self._main, name="conveyor-scheduler",
                                        daemon=True)

    # -- consumer-side API ---------------------------------------------------
    def start(self) -> None:
        if self._source is not None:
            events = self.events
            self._source.start(lambda: events.put(_INPUT))
        self._thread.start()

    def stats(self) -> Stats:
        return self.counters.snapshot(self.backend.name, self._workers)

    def took(self, n: int) -> None:
        """The consumer took ``n`` items from the outbox: free window space.

        Called by the consumer only. The dispatcher is woken only when it is
        waiting for room in the window (it sets ``_want_room`` and then looks
        at ``consumed`` again, so one of the two always sees the other).
        """
        self.consumed += n
        if self._want_room and self.consumed >= self._room_at:
            self._want_room = False
            self.events.put(0)

    def stop(self, error: BaseException | None = None) -> None:
        """Ask the dispatcher to cancel the run (non-blocking, idempotent).

        ``error``, if given, is raised in the consumer in place of the results
        not produced (e.g. ``PoolClosed`` when the pool is closed under it).
        """
        self.events.put(_STOP if error is None else _Stop(error))

    def cancel_batches(self) -> None:
        """From any thread: mark the batches in flight cancelled, so that a worker
        taking one now drops it (``stop`` then cancels them properly)."""
        for b in list(self._in_flight):   # one C-level copy: safe while the dispatcher runs
            b.cancelled = True

    def close(self, *, wait: bool = True, error: BaseException | None = None) -> None:
        self.stop(error)
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            join(self._thread)   # in slices: Ctrl-C must land

    def on_exit(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` (in the dispatcher thread) when it ends; False if it has."""
        with self._exit_lock:
            if self._exited:
                return False
            self._exit_callbacks.append(callback)
            return True

    def wait_finished(self) -> None:
        """Wait (interruptibly) until the dispatcher thread has ended."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            join(self._thread)

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    @property
    def total(self) -> int | None:
        """The input's length, where it has one."""
        return self._total

    # -- dispatcher thread ---------------------------------------------------
    def _main(self) -> None:
        complete = False
        try:
            if self._owns_backend:
                self.backend.start()
            self._loop()
            # Not stopped: the input was read to its end (or failed)
            complete = not self._stopping and self._input_error is None
        except BaseException as exc:  # a bug in conveyor, or a backend failure
            self._end(exc)
        finally:
            try:
                if self._source is not None:
                    self._source.close()
                self._drain()
            finally:
                if self._owns_backend:
                    self.backend.close(cancel=True)
                self.counters.ended = time.perf_counter()
                if self._bar is not None:
                    self._bar.close(complete=complete)
                self._end(None)
                with self._exit_lock:
                    self._exited = True
                    callbacks = self._exit_callbacks[:]
                for cb in callbacks:
                    cb()

    def _loop(self) -> None:
        events = self.events
        handle = self._handle
        last_news = time.monotonic()
        while True:
            if not self._stopping:
                self._emit()    # first: what it hands out (or skips) frees window room
                self._fill()
            if self._finished():
                return
            wait = self._housekeeping()
            if self._out:
                # Hand results over at most every FLUSH_EVERY seconds while
                # more are coming: each hand-over wakes the consumer's thread,
                # and under a burst of completions those wake-ups would take
                # the GIL from the workers. An idle run hands over at once.
                due = self._last_flush + FLUSH_EVERY - time.monotonic()
                if due <= 0 or not self._in_flight:
                    self._flush()
                elif wait is None or wait > due:
                    wait = due
            src = self._source
            if src is not None and src.chunk > 1 and (wait is None or wait > CHUNK_POLL):
                wait = CHUNK_POLL   # the pump reads a chunk: look at the buffer meanwhile
            if self._in_flight:
                # No completion for POLL_EVERY seconds (timers may have woken us
                # meanwhile): is work stranded, e.g. on a closed event loop?
                quiet = time.monotonic() - last_news
                if quiet >= POLL_EVERY:
                    self.backend.poll()
                    last_news = time.monotonic()
                    quiet = 0.0
                if wait is None or wait > POLL_EVERY - quiet:
                    wait = POLL_EVERY - quiet
            try:
                ev = events.get(timeout=wait) if wait is None or wait > 0 else events.get(False)
            except Empty:
                continue
            if type(ev) is Completion:
                last_news = time.monotonic()
            handle(ev)
            while not events.empty():
                handle(events.get())

    def _finished(self) -> bool:
        if self._stopping:
            return not self._in_flight
        if self._in_flight or self._retry_heap:
            return False
        if not (self._input_done or self._halt_input):
            return False
        if self._next_emit < self._groups_made:
            return False
        self._end(self._input_error)
        return True

    def _drain(self) -> None:
        """Cancel what is in flight and wait for every batch to report."""
        self._stopping = True
        self._retry_heap.clear()
        for b in list(self._in_flight):
            self.backend.cancel(b)
        while self._in_flight:
            wait = min(self._expire_overdue(time.monotonic()), time.monotonic() + 1.0)
            try:
                ev = self.events.get(timeout=max(0.0, wait - time.monotonic()))
            except Empty:
                self.backend.poll()   # e.g. batches stranded on a closed event loop
                continue
            if type(ev) is Completion:
                self._in_flight.pop(ev.batch, None)
                self.counters.busy += ev.busy
                self._count_discarded(ev)

    def _count_discarded(self, c: Completion) -> None:
        """Outcomes that arrive after the run stopped still count in the stats."""
        n = len(c.values) - c.batch.harvested
        if n > 0:
            failures = sum(1 for p in c.errors if p >= c.batch.harvested) if c.errors else 0
            self.counters.done += n - failures
            self.counters.failed += failures

    def _handle(self, ev: Any) -> None:
        if type(ev) is Completion:
            self._on_completion(ev)
        elif ev is _STOP:
            self._cancel()
        elif type(ev) is _Stop:
            self._end(ev.error)
            self._cancel()
        # _INPUT needs no handling: waking up makes the loop fill again.

    def _cancel(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._source is not None:
            self._source.close()
        self._retry_heap.clear()
        for b in list(self._in_flight):
            self.backend.cancel(b)
        self._end(None)

    def _flush(self) -> None:
        """Hand the pending chunks to the consumer in one entry (one wake-up)."""
        self._last_flush = time.monotonic()
        out = self._out
        if len(out) == 1:
            self.outbox.put(out[0])
        else:
            self.outbox.put(tuple(out))
        self._out = []

    def _end(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            if self._out:
                self._flush()
            self.outbox.put(End(error))

    # -- submitting ----------------------------------------------------------
    def _window(self) -> int:
        w = self.options.window
        if w is not None:
            return w
        return max(4 * self._workers, min(2 * self._workers * self._batcher.size,
                                          DEFAULT_WINDOW_CAP))

    def _submit(self, items: list[Any], group: Group, start: int, attempt: int = 0) -> None:
        b = Batch(self.fn, items, self.events.put, owner=self, group=group, start=start,
                  attempt=attempt, timed=self.options.timeout is not None)
        self._in_flight[b] = None
        self.counters.batches += 1
        self.backend.submit(b)

    def _fill(self) -> None:
        opts = self.options
        heap = self._retry_heap
        if heap:
            now = time.monotonic()
            while heap and heap[0][0] <= now and self._rate_allows():
                _, _, g, pos, item, attempt = heapq.heappop(heap)
                self._submit([item], g, pos, attempt)
        if self._input_done or self._halt_input:
            return
        # A backend may follow a cluster that grows or shrinks (dask)
        self._workers = workers = self.backend.workers
        window = self._window()
        size = self._batcher.size
        if opts.window is not None:
            size = min(size, max(1, opts.window // (2 * workers)))
        # Hot loop (one turn per batch): locals only.
        it = self._it
        total = self._total
        rate = opts.rate
        ordered = opts.ordered
        live = self._live
        seq = self._seq
        in_flight = self._in_flight
        submit = self.backend.submit
        fn = self.fn
        sink = self.events.put
        timed = opts.timeout is not None
        counters = self.counters
        src = self._source
        per_worker = self.backend.batches_per_worker
        most = None if per_worker is None else per_worker * workers
        # The last batches of an input of known length get smaller, so that the
        # workers finish together: at most the items left over the batches
        # that can wait on the workers at once. Where batches wait on the
        # workers (dask), a task costs milliseconds: a last batch keeps at
        # least an eighth of the learned size (a fraction of the batch target).
        tail = workers if most is None else most
        least = 1 if most is None else max(1, size // 8)
        # Refill once a few items' room is free, not at every item taken: each
        # refill wakes this thread, and a refill of one item makes a batch of
        # one. The window still holds `window - refill` items meanwhile.
        refill = max(1, min(window // 4, max(size, window // 8)))
        short = refill            # the first turn waits for that much room; later ones fill it
        self._want_room = False   # set again below if still short of room
        while True:
            room = window - (self._outstanding - self.consumed)
            if room < short and (room <= 0 or self._in_flight):
                self._room_at = self._outstanding - window + refill
                self._want_room = True
                room = window - (self._outstanding - self.consumed)
                if room < short:
                    return
            short = 1
            if most is not None and len(in_flight) >= most:
                return   # a completion wakes us
            slot = self._next_start
            if rate is not None and not self._rate_allows():
                return
            want = size
            if total is not None:
                want = min(want, max(least, -(-(total - self._pulled) // tail)))
            want = max(1, min(want, room))
            if src is not None:
                # The pump may read what the window has room for, no more.
                ask = self._pulled + room - src.requested
                if ask > 0:
                    src.request(ask)
                items, ended = src.take(want)
                if not items:
                    self._next_start = slot   # no start happened: give the slot back
                    if ended:   # else: _INPUT wakes us when items come
                        self._end_input(src.error)
                    return
            else:
                items = []
                try:
                    if want == 1:
                        x = next(it, _NONE)
                        if x is not _NONE:
                            items.append(x)
                    else:
                        items.extend(itertools.islice(it, want))  # keeps what came before an error
                except Exception as exc:  # the input failed: raise it after the results
                    self._end_input(exc, len(items))
                    if not items:
                        return
                    want = len(items) + 1   # submit what came before, then stop
                if not items:
                    self._input_done = True
                    return
            n = len(items)
            g = Group(next(seq), self._pulled, items)
            if ordered:
                live[g.seq] = g
            self._groups_made += 1
            self._pulled += n
            self._outstanding += n
            counters.submitted += n
            counters.batches += 1
            b = Batch(fn, items, sink, owner=self, group=g, timed=timed)
            in_flight[b] = None
            submit(b)
            if n < want and src is None:
                self._input_done = True
                return
            if len(in_flight) == workers:
                # Every worker has a batch: let them start (release the GIL
                # once) before preparing the batches that will queue up.
                time.sleep(0)

    def _end_input(self, error: BaseException | None, more: int = 0) -> None:
        self._input_done = True
        if error is not None:
            if item_index(error) is None:   # a conveyor task's error (a pipeline stage's)
                add_note(error, "conveyor: raised by the input iterable after "  # has its note
                                 f"{self._pulled + more} items")
            self._input_error = error

    def _rate_allows(self) -> bool:
        rate = self.options.rate
        if rate is None:
            return True
        now = time.monotonic()
        if now < self._next_start:
            return False
        # Strict spacing (no bursts): starts are at least 1/rate apart.
        self._next_start = max(self._next_start, now) + 1.0 / rate
        return True

    # -- completions and the error policy --------------------------------------
    def _on_completion(self, c: Completion) -> None:
        b = c.batch
        self._in_flight.pop(b, None)
        self._expired.pop(b, None)
        self.counters.busy += c.busy
        if self._stopping:
            self._count_discarded(c)
            return
        if c.lost:
            self._raise(PoolClosed(
                f"the {self.backend.name} workers stopped before this map finished (the pool "
                "was closed, or the event loop running them ended)"))
            return
        n = len(c.values)
        if n < b.limit and not b.cancelled:  # the rest did not run: submit it again
            self._submit(b.items[n:b.limit], b.group, b.start + n, b.attempt)
        done = b.harvested
        if c.rerun is not None:
            # Items a..z-1 ran, but their outcomes died with the worker: run them
            # again (at least once: a task may run twice when its worker dies).
            a, z = max(c.rerun[0], done), c.rerun[1]
            if z > a:
                if not b.cancelled:
                    self._submit(b.items[a:z], b.group, b.start + a, b.attempt)
                if a > done:
                    self._absorb(b, done, c.values[done:a],
                                 [p - done for p in c.errors if done <= p < a]
                                 if c.errors else None)
                done = z
        if n <= done:
            return
        if not c.errors and not done:
            batcher = self._batcher
            batcher.observe(n, c.busy)
            if batcher.per_item is not None and batcher.fixed is None:
                self.backend.remember(self.fn, batcher.per_item)
        values = c.values if not done else c.values[done:]
        errors = c.errors if not done or not c.errors else [p - done for p in c.errors
                                                          if p >= done]
        self._absorb(b, done, values, errors)

    def _harvest(self, b: Batch) -> None:
        """Take the outcomes a long-running batch has so far, to deliver them now."""
        got = self.backend.harvest(b)
        if got is None:
            return
        values, errors = got
        offset = b.harvested
        b.harvested = offset + len(values)
        self._absorb(b, offset, values, [p - offset for p in errors] or None)

    # -- timers: timeouts, retries, rate, stealing -----------------------------
    def _expire_overdue(self, now: float) -> float:
        """Stop the items that overran ``timeout``; returns the next deadline.

        Also while the run is stopping: a cancelled run waits for the items
        that are running, and a hung one must not make that wait endless.
        """
        timeout = self.options.timeout
        if timeout is None or not self._in_flight:
            return math.inf
        wake = now + timeout
        for r in self.backend.running():
            b = r.batch
            if b.owner is not self:
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

    def _housekeeping(self) -> float | None:
        """Expire overdue items, steal tails for idle workers; seconds to sleep."""
        now = time.monotonic()
        wake = self._expire_overdue(now)
        if self._stopping:
            return None if wake == math.inf else max(0.0, wake - time.monotonic())
        if self._retry_heap:
            wake = min(wake, self._retry_heap[0][0])
        if self.options.rate is not None and not (self._input_done or self._halt_input) \
                and self._outstanding - self.consumed < self._window():
            wake = min(wake, self._next_start)
        if self._in_flight:
            wake = min(wake, self._rebalance(now))
        return None if wake == math.inf else max(0.0, wake - time.monotonic())

    def _rebalance(self, now: float) -> float:
        """Batches running long: deliver what they have finished (harvest), and
        hand their unstarted items to idle workers when those have nothing
        else to do (steal). Returns when to look again."""
        after = 4 * self.backend.batch_target
        poll = max(after, 0.05)
        idle = self._workers - len(self._in_flight)
        starved = self._input_done or self._halt_input or \
            self._outstanding - self.consumed >= self._window()
        can_steal = self.backend.can_steal and starved
        ordered = self.options.ordered
        wake = math.inf
        for b in list(self._in_flight):
            if self._stopping:
                break
            it = b.it
            if it is None or b.cancelled or b.limit < 2:
                continue
            if now - b.started < after:
                wake = min(wake, b.started + after)
                continue
            out = b.out
            if out is not None and len(out) > b.harvested and \
                    (not ordered or b.group.seq == self._next_emit):
                self._harvest(b)
            hint: int = it.__length_hint__()  # type: ignore[attr-defined]
            if can_steal and idle > 0 and hint > 0:
                k = self.backend.steal(b)
                if k is not None:
                    tail = b.items[k:b.limit]
                    b.limit = k
                    pieces = min(idle, len(tail))
                    step = -(-len(tail) // pieces)
                    for i in range(0, len(tail), step):
                        self._submit(tail[i:i + step], b.group, b.start + k + i, b.attempt)
                    idle -= pieces
            if out is not None and len(out) < b.limit:
                wake = min(wake, now + poll)
        return wake
