"""What happens to outcomes: retries, the error policy, ordering, hand-over.

The part of the scheduler (``_scheduler.Run``) that turns the outcomes a
backend reports into what the caller sees. A *group* is the items pulled from
the input in one go (first submitted as one batch); the reorder buffer holds
groups, never single items. Outcomes are recorded by position, so a task that
*returns* an exception object is never mistaken for one that raised it.

* ``_absorb`` records outcomes of a batch (or of the part of it harvested
  early) in their group; ``_triage`` applies retries (a backoff heap) and the
  error policy to the failures among them.
* Ordered runs hand out finished groups in input order (``_emit``), and the
  finished prefix of the head group early (``_emit_head_prefix``); unordered
  runs hand out each batch's outcomes as they come (``_emit_unordered``).
* A failure to raise stops the input, cancels what comes after it (ordered)
  and is raised once everything before it has been handed out.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import time
from typing import TYPE_CHECKING, Any

from .errors import TaskTimeout

if TYPE_CHECKING:
    from ._backends._base import Backend, Batch
    from ._progress import Counters
    from ._scheduler import Options
    from ._source import Source

__all__ = ["MAX_BACKOFF", "Group", "Outcomes", "Raised", "add_note", "annotate", "backoff_delay",
           "first_unset"]

UNSET: Any = object()   # a group slot whose outcome is not final yet
SKIP: Any = object()    # a failure dropped by on_error="skip"

MAX_BACKOFF = 60.0


class Raised:
    """In place of a result, with ``on_error="defer"`` (the executors' ``map``):
    the exception to raise when the consumer reaches it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Group:
    """Items pulled from the input together: the unit of ordering."""

    __slots__ = ("base", "emitted", "fatal", "items", "pending", "seq", "special", "values")

    def __init__(self, seq: int, base: int, items: list[Any]) -> None:
        self.seq = seq
        self.base = base            # input index of items[0]
        self.items = items
        self.values: list[Any] | None = None
        self.pending = len(items)   # outcomes not final yet
        self.special = False        # holds SKIP or a fatal error
        self.fatal: int | None = None
        self.emitted = 0            # ordered mode: items of the group handed out so far


class Outcomes:
    """Mixin of ``Run``: the state below is created by ``Run.__init__``."""

    options: Options
    backend: Backend
    counters: Counters
    _source: Source | None
    _in_flight: dict[Batch, None]
    _ready: dict[int, Group]
    _live: dict[int, Group]
    _next_emit: int
    _head_dirty: bool
    _out: list[list[Any]]
    _outstanding: int
    _retry_heap: list[tuple[float, int, Group, int, Any, int]]
    _retry_tie: itertools.count[int]
    _fatal_index: float
    _halt_input: bool

    def _end(self, error: BaseException | None) -> None:
        raise NotImplementedError

    def _cancel(self) -> None:
        raise NotImplementedError

    def _absorb(self, b: Batch, offset: int, values: list[Any],
                errors: list[int] | None) -> None:
        """Record outcomes of ``b.items[offset:offset + len(values)]``."""
        counters = self.counters
        n = len(values)
        g: Group = b.group
        start = b.start + offset
        final = n
        clean = True
        raised: list[int] = []
        if errors:
            retrying, failures = self._triage(b, offset, values, errors, raised)
            final -= retrying
            counters.done += final - failures
            clean = not (retrying or g.special)
        else:
            counters.done += n
        if g.values is None and start == 0 and n == len(g.items):
            g.values = values
        else:
            if g.values is None:
                g.values = [UNSET] * len(g.items)
            g.values[start:start + n] = values
        g.pending -= final
        if self.options.ordered:
            if g.pending == 0 or (g.fatal is not None
                                  and first_unset(g.values, 0, g.fatal + 1) > g.fatal):
                self._ready[g.seq] = g
            elif g.seq == self._next_emit:
                self._head_dirty = True
        else:
            if g.pending == 0:
                self._next_emit += 1   # unordered: counts the groups that are finished
            self._emit_unordered(values, clean, raised)

    def _triage(self, b: Batch, offset: int, values: list[Any], errors: list[int],
                raised: list[int]) -> tuple[int, int]:
        """Apply retries and the error policy: (items to retry, final failures).

        Positions (in ``values``) of failures to raise are added to ``raised``.
        """
        opts = self.options
        counters = self.counters
        g: Group = b.group
        retrying = failures = 0
        for p in errors:
            exc = values[p]
            index = g.base + b.start + offset + p
            # Retry unless a failure to raise comes before this item (ordered:
            # items before the raised one still count, exactly like map()).
            if b.attempt < opts.retries and isinstance(exc, opts.retry_on) \
                    and index < self._fatal_index:
                heapq.heappush(self._retry_heap, (
                    time.monotonic() + backoff_delay(opts.backoff, b.attempt),
                    next(self._retry_tie),
                    g, b.start + offset + p, b.items[offset + p], b.attempt + 1))
                values[p] = UNSET
                counters.retried += 1
                retrying += 1
                continue
            annotate(exc, index, self.backend.name, b.attempt)
            counters.failed += 1
            failures += 1
            if isinstance(exc, TaskTimeout):
                counters.timed_out += 1
            if opts.on_error == "defer":   # the executors' map: raised as it is consumed
                values[p] = Raised(exc)
            elif opts.on_error == "skip":
                values[p] = SKIP
                g.special = True
                counters.skipped += 1
            elif opts.on_error == "raise":
                raised.append(p)
                g.special = True
                pos = b.start + offset + p
                if g.fatal is None or pos < g.fatal:
                    g.fatal = pos
                self._fatal_index = min(self._fatal_index, index)
                self._on_fatal(g)
        return retrying, failures

    def _on_fatal(self, g: Group) -> None:
        """A failure will be raised: pull nothing more, cancel what comes after it."""
        self._halt_input = True
        if self._source is not None:
            self._source.close()
        if self.options.ordered:
            for b in list(self._in_flight):
                if b.group.seq > g.seq:
                    self.backend.cancel(b)
            fatal = self._fatal_index
            self._retry_heap[:] = [r for r in self._retry_heap if r[2].base + r[3] < fatal]
            heapq.heapify(self._retry_heap)

    # -- emitting --------------------------------------------------------------
    def _emit(self) -> None:
        """Ordered mode: hand out finished groups in order (and the head's prefix)."""
        ready = self._ready
        while True:
            g = ready.pop(self._next_emit, None)
            if g is None:
                if self._head_dirty:
                    self._emit_head_prefix()
                return
            self._next_emit += 1
            self._live.pop(g.seq, None)
            values = g.values
            assert values is not None
            done = g.emitted
            if not g.special and not done:
                self._out.append(values)
                continue
            stop = len(values) if g.fatal is None else g.fatal
            chunk = [v for v in values[done:stop] if v is not SKIP]
            self._outstanding -= len(values) - done - len(chunk)
            if chunk:
                self._out.append(chunk)
            if g.fatal is not None:
                self._raise(values[g.fatal])
                return

    def _emit_head_prefix(self) -> None:
        """The head group is not finished, but its first items are: hand those out."""
        self._head_dirty = False
        g = self._live.get(self._next_emit)
        if g is None or g.values is None:
            return
        values = g.values
        k = first_unset(values, g.emitted)
        if g.fatal is not None:
            k = min(k, g.fatal)
        if k <= g.emitted:
            return
        chunk = values[g.emitted:k]
        if g.special:
            chunk = [v for v in chunk if v is not SKIP]
            self._outstanding -= k - g.emitted - len(chunk)
        g.emitted = k
        if chunk:
            self._out.append(chunk)

    def _emit_unordered(self, values: list[Any], clean: bool, raised: list[int]) -> None:
        if clean:
            self._out.append(values)
            return
        # By position: a task may *return* an exception object as its value.
        drop = set(raised)
        chunk = []
        for p, v in enumerate(values):
            if v is UNSET:
                continue
            if v is SKIP or p in drop:
                self._outstanding -= 1
            else:
                chunk.append(v)
        if chunk:
            self._out.append(chunk)
        if raised:
            self._raise(values[min(raised)])

    def _raise(self, error: BaseException) -> None:
        self._end(error)
        self._cancel()


def first_unset(values: list[Any], start: int, stop: int | None = None) -> int:
    """Index of the first not-final slot in ``values[start:stop]`` (else ``stop``).

    By identity: user values may have an ``__eq__`` that is not a bool (arrays).
    """
    end = len(values) if stop is None else stop
    for i in range(start, end):
        if values[i] is UNSET:
            return i
    return end


def backoff_delay(backoff: float, attempt: int) -> float:
    """Seconds before retry ``attempt + 1``: exponential, jittered by +/-50%, capped."""
    delay: float = backoff * (2 ** attempt) * random.uniform(0.5, 1.5)
    return min(delay, MAX_BACKOFF)


def annotate(exc: BaseException, index: int, backend: str, attempt: int) -> None:
    with contextlib.suppress(Exception):  # a type with __slots__ or a strict __setattr__
        exc.__conveyor_index__ = index  # type: ignore[attr-defined]
    tries = f" (after {attempt + 1} attempts)" if attempt else ""
    add_note(exc, f"conveyor: raised by the task for item #{index}{tries} "
                   f"on the {backend} backend")


def add_note(exc: BaseException, note: str) -> None:
    # Some exception types refuse new attributes (frozen dataclasses, a strict
    # __setattr__): the note is a courtesy, never a reason to fail the run.
    with contextlib.suppress(Exception):
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list) and note in notes:
            return
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        else:  # Python 3.10: keep the text where 3.11+ would put it
            exc.__notes__ = [*(notes or []), note]  # type: ignore[attr-defined]
