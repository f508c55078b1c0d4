"""The engine's clock: monotonic seconds, injectable so tests can run on a fake one.

Every time the core reads (a retry's due time, a deadline, the rate's next
start, a batch's age) comes from its clock. Backends stamp ``Batch.started``
and ``Running.since`` with ``time.monotonic()``, the real clock's time; a
test that runs the core on a :class:`FakeClock` stamps them from that clock.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["MONOTONIC", "Clock", "FakeClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds (only differences mean anything)."""
        ...


class _Monotonic:
    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()


#: The real clock.
MONOTONIC: Clock = _Monotonic()


class FakeClock:
    """A clock that moves only when told to (``advance``): for deterministic tests."""

    __slots__ = ("t",)

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        """Move the time forward; raises ``ValueError`` for a negative step."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self.t += seconds
