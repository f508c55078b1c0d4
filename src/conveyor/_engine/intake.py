"""Intake: what is taken from the input, and when.

* The input is an iterator over a built-in collection (read here: it cannot
  block) or a :class:`~conveyor._source.Source`, whose pump reads any other
  iterable elsewhere; the pump may read only what the window has room for.
* The window: ``outstanding`` counts items taken from the input and not yet
  handed to the consumer (running, queued, waiting to be retried or
  reordered, or in the outbox); ``consumed`` is written by the consumer
  (``took``). Nothing is pulled past the window. The refill rule: once the
  window is full, pull again only when a few items' room is free (a refill
  of one item would make a batch of one, and each refill wakes the driver).
* Rate: starts are at least ``1 / rate`` seconds apart (no bursts).
* Batch sizing: the adaptive :class:`~conveyor._batching.Batcher`, and the
  tail caps: the last batches of an input of known length get smaller so
  that the workers finish together.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, NamedTuple

from .._backends._base import Backend, underlying
from .._batching import Batcher, Memory
from .._source import Source
from ..errors import item_index
from .options import Options
from .policy import add_note

__all__ = ["DEFAULT_WINDOW_CAP", "Intake", "Round", "Window"]

DEFAULT_WINDOW_CAP = 65_536
SHARED_SPLIT = 16    # a backend that shares batches: workers per batch, at least
_NONE: Any = object()    # next(iterator, _NONE): the iterator is exhausted


class Window:
    """Items taken and not yet handed out, against the window's size.

    ``consumed`` and ``want_room`` are shared with the consumer (``took``):
    the core sets ``want_room`` and then looks at ``consumed`` again, so one
    of the two always sees the other and a wake-up is never lost.
    """

    __slots__ = ("consumed", "outstanding", "room_at", "want_room")

    def __init__(self) -> None:
        self.outstanding = 0     # items taken, minus those dropped (not delivered)
        self.consumed = 0        # items the consumer took (written by the consumer)
        self.want_room = False   # full: the driver wants a wake-up once items are taken
        self.room_at = 0         # ... once `consumed` reaches this

    def took(self, n: int) -> bool:
        """The consumer took ``n`` items; True if the core must be woken for it."""
        self.consumed += n
        if self.want_room and self.consumed >= self.room_at:
            self.want_room = False
            return True
        return False

    def held(self) -> int:
        return self.outstanding - self.consumed


class Round(NamedTuple):
    """The sizes one fill uses (computed once per fill, not per batch)."""

    window: int
    size: int          # the batch size to aim for
    tail: int          # the input's remainder is spread over this many batches
    least: int         # a tail batch holds at least this many items
    refill: int        # room to wait for before pulling again


class Intake:
    """The input, the window, the rate and the batch size of one run."""

    def __init__(self, items: Iterator[Any] | Source, total: int | None, backend: Backend,
                 fn: object, options: Options, memory: Memory | None = None) -> None:
        self.source = items if isinstance(items, Source) else None
        self._it: Iterator[Any] = iter(()) if isinstance(items, Source) else items
        self.total = total
        self.options = options
        self.window = Window()
        self.pulled = 0                   # items taken from the input
        self.done = False                 # the input ended (or failed)
        self.error: BaseException | None = None   # the input's failure, raised last
        self.halted = False               # a fatal failure: pull nothing more
        self.next_start = 0.0             # rate: the earliest next start
        self.workers = backend.workers
        self.shared = backend.shares_batches
        self.batcher = Batcher(backend.batch_target, backend.max_batch, options.batch)
        if options.rate is not None or (options.timeout is not None
                                        and not backend.times_items):
            self.batcher = Batcher(backend.batch_target, 1, 1)
        elif memory is not None:   # a Pool's earlier map of fn learned its size: start there
            known = memory.recall(underlying(fn))
            if known is not None:
                self.batcher.prime(known)

    @property
    def closed(self) -> bool:
        """Nothing more will be pulled."""
        return self.done or self.halted

    def limit(self) -> int:
        """The window's size: given, or a few batches per worker."""
        w = self.options.window
        if w is not None:
            return w
        return max(4 * self.workers, min(2 * self.workers * self.batcher.size,
                                         DEFAULT_WINDOW_CAP))

    def plan(self, workers: int, most: int | None) -> Round:
        """The sizes of this fill, for ``workers`` (``most``: batches in flight at most)."""
        self.workers = workers
        window = self.limit()
        size = self.batcher.size
        if self.shared and self.batcher.fixed is None:
            # Workers draw items one by one from the oldest batch, so a batch is
            # no one worker's queue: size it for the bookkeeping it saves (one
            # per SHARED_SPLIT workers), not for one worker's time. The window
            # holds at least eight of them.
            size = max(1, min(max(size, workers // SHARED_SPLIT), self.batcher.max_size,
                              window // 8))
        elif self.options.window is not None:
            size = min(size, max(1, self.options.window // (2 * workers)))
        # At most the items left over the batches that can wait on the workers
        # at once (a shared batch does not wait on one worker: no cap). Where
        # batches wait on the workers (dask), a task costs milliseconds: a last
        # batch keeps at least an eighth of the learned size.
        tail = 1 if self.shared else workers if most is None else most
        least = 1 if most is None else max(1, size // 8)
        refill = max(1, min(window // 4, max(size, window // 8)))
        return Round(window, size, tail, least, refill)

    def room(self, r: Round, short: int, busy: bool) -> int:
        """Room in the window, or 0 if less than ``short`` (then a wake-up is asked for
        once ``refill`` items' room is free). ``busy``: batches are in flight."""
        w = self.window
        room = r.window - (w.outstanding - w.consumed)
        if room < short and (room <= 0 or busy):
            w.room_at = w.outstanding - r.window + r.refill
            w.want_room = True
            room = r.window - (w.outstanding - w.consumed)
            if room < short:
                return 0
        return room

    def rate_allows(self, now: float) -> bool:
        rate = self.options.rate
        if rate is None:
            return True
        if now < self.next_start:
            return False
        # Strict spacing (no bursts): starts are at least 1/rate apart.
        self.next_start = max(self.next_start, now) + 1.0 / rate
        return True

    def pull(self, r: Round, room: int, now: float) -> list[Any]:
        """The next batch's items (empty: nothing to pull now, or the input ended)."""
        slot = self.next_start
        if self.options.rate is not None and not self.rate_allows(now):
            return []
        want = r.size
        total = self.total
        if total is not None:
            want = min(want, max(r.least, -(-(total - self.pulled) // r.tail)))
        want = max(1, min(want, room))
        src = self.source
        if src is not None:
            # The pump may read what the window has room for, no more.
            ask = self.pulled + room - src.requested
            if ask > 0:
                src.request(ask)
            items, ended = src.take(want)
            if not items:
                self.next_start = slot   # no start happened: give the slot back
                if ended:   # else: the pump wakes the driver when items come
                    self.end(src.error)
                return items
        else:
            items = []
            try:
                if want == 1:
                    x = next(self._it, _NONE)
                    if x is not _NONE:
                        items.append(x)
                else:
                    items.extend(itertools.islice(self._it, want))  # keeps what came before
            except Exception as exc:  # the input failed: raise it after the results
                self.end(exc, len(items))
            if len(items) < want:
                self.done = True
        n = len(items)
        self.pulled += n
        self.window.outstanding += n
        return items

    def end(self, error: BaseException | None, more: int = 0) -> None:
        """The input ended; ``error``: it failed after ``pulled + more`` items."""
        self.done = True
        if error is not None:
            if item_index(error) is None:   # a conveyor task's error (a pipeline stage's)
                add_note(error, "conveyor: raised by the input iterable after "  # has its note
                                 f"{self.pulled + more} items")
            self.error = error

    def halt(self) -> None:
        """A failure will be raised: pull nothing more, and stop the pump."""
        self.halted = True
        if self.source is not None:
            self.source.close()

    def wants_start(self) -> bool:
        """Rate-limited and with room: the core wakes at ``next_start``."""
        return self.options.rate is not None and not self.closed \
            and self.window.held() < self.limit()
