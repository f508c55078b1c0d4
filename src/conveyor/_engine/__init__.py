"""The engine: a sans-I/O core (``core``) in parts that own their state, and its drivers.

* ``intake``: the input, the window, the rate, batch sizing;
* ``ordering``: groups, the reorder buffer, the hand-out;
* ``policy``: retries (a typed queue), the error policy, notes on failures;
* ``timers``: deadlines, stealing and harvesting;
* ``clock``: the time the core reads (a fake one in tests);
* ``core``: the state machine that ties them together;
* ``thread``: the driver that runs it in a dispatcher thread.
"""

from __future__ import annotations

from .options import Options
from .thread import Run

__all__ = ["Options", "Run"]
