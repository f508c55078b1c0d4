"""Ordering: groups, the reorder buffer, and handing outcomes out.

A *group* is the items pulled from the input in one go (first submitted as
one batch): the unit of ordering. The reorder buffer holds groups, never
single items; a group's outcomes are recorded by position as batches of it
report (a stolen tail or a retry reports separately).

* Ordered runs hand out finished groups in input order, and the finished
  prefix of the head group early (a batch stuck on one slow item does not
  hold back the results before it).
* Unordered runs hand out each batch's outcomes as they come.
* Results skipped (``on_error="skip"``) or replaced by a raise leave the
  window here, since they will never reach the consumer.

What is handed out collects in ``out`` (a list of chunks) until a driver
moves it to the consumer.
"""

from __future__ import annotations

from typing import Any

from .intake import Window
from .policy import SKIP, UNSET

__all__ = ["Group", "Ordering", "first_unset"]


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


class Ordering:
    """The reorder buffer and the hand-out of one run."""

    def __init__(self, ordered: bool, window: Window) -> None:
        self.ordered = ordered
        self._window = window
        self.out: list[list[Any]] = []       # chunks not yet handed to the consumer
        self.made = 0                        # groups opened
        #: Ordered: the next group to hand out; unordered: groups finished.
        self.next_emit = 0
        self._ready: dict[int, Group] = {}
        self._live: dict[int, Group] = {}    # ordered mode: groups not handed out
        self._head_dirty = False

    def open(self, base: int, items: list[Any]) -> Group:
        """A new group of ``items`` (input index ``base`` onwards)."""
        g = Group(self.made, base, items)
        self.made += 1
        if self.ordered:
            self._live[g.seq] = g
        return g

    @property
    def settled(self) -> bool:
        """Every group opened has been handed out (ordered) or finished (unordered)."""
        return self.next_emit >= self.made

    def record(self, g: Group, start: int, values: list[Any], final: int, clean: bool,
               raised: list[int]) -> BaseException | None:
        """Store outcomes of ``g.items[start:start + len(values)]`` (``final`` of them
        final); unordered, hand them out. Returns the failure to raise, if any."""
        n = len(values)
        if g.values is None and start == 0 and n == len(g.items):
            g.values = values
        else:
            if g.values is None:
                g.values = [UNSET] * len(g.items)
            g.values[start:start + n] = values
        g.pending -= final
        if self.ordered:
            if g.pending == 0 or (g.fatal is not None
                                  and first_unset(g.values, 0, g.fatal + 1) > g.fatal):
                self._ready[g.seq] = g
            elif g.seq == self.next_emit:
                self._head_dirty = True
            return None
        if g.pending == 0:
            self.next_emit += 1   # unordered: counts the groups that are finished
        return self._emit_unordered(values, clean, raised)

    def is_head(self, g: Group) -> bool:
        """Is ``g`` the next group to hand out (ordered), or may it go out at once?"""
        return not self.ordered or g.seq == self.next_emit

    def emit(self) -> BaseException | None:
        """Ordered mode: hand out finished groups in order (and the head's prefix).
        Returns the failure to raise once the results before it are out."""
        ready = self._ready
        moved = False
        while True:
            g = ready.pop(self.next_emit, None)
            if g is None:
                # A new head may hold a finished prefix recorded while it waited.
                if self._head_dirty or moved:
                    self._emit_head_prefix()
                return None
            moved = True
            self.next_emit += 1
            self._live.pop(g.seq, None)
            values = g.values
            assert values is not None
            done = g.emitted
            if not g.special and not done:
                self.out.append(values)
                continue
            stop = len(values) if g.fatal is None else g.fatal
            chunk = [v for v in values[done:stop] if v is not SKIP]
            self._window.outstanding -= len(values) - done - len(chunk)
            if chunk:
                self.out.append(chunk)
            if g.fatal is not None:
                error: BaseException = values[g.fatal]
                return error

    def _emit_head_prefix(self) -> None:
        """The head group is not finished, but its first items are: hand those out."""
        self._head_dirty = False
        g = self._live.get(self.next_emit)
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
            self._window.outstanding -= k - g.emitted - len(chunk)
        g.emitted = k
        if chunk:
            self.out.append(chunk)

    def _emit_unordered(self, values: list[Any], clean: bool,
                        raised: list[int]) -> BaseException | None:
        if clean:
            self.out.append(values)
            return None
        # By position: a task may *return* an exception object as its value.
        drop = set(raised)
        chunk = []
        for p, v in enumerate(values):
            if v is UNSET:
                continue
            if v is SKIP or p in drop:
                self._window.outstanding -= 1
            else:
                chunk.append(v)
        if chunk:
            self.out.append(chunk)
        if raised:
            error: BaseException = values[min(raised)]
            return error
        return None

    def take(self) -> list[list[Any]]:
        """The chunks handed out since the last take (for a driver to deliver)."""
        out, self.out = self.out, []
        return out


def first_unset(values: list[Any], start: int, stop: int | None = None) -> int:
    """Index of the first not-final slot in ``values[start:stop]`` (else ``stop``).

    By identity: user values may have an ``__eq__`` that is not a bool (arrays).
    """
    end = len(values) if stop is None else stop
    for i in range(start, end):
        if values[i] is UNSET:
            return i
    return end
