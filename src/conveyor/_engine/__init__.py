"""The engine: a sans-I/O core (``core``) in parts that own their state, and its drivers.

* ``intake``: the input, the window, the rate, batch sizing;
* ``ordering``: groups, the reorder buffer, the hand-out;
* ``policy``: retries (a typed queue), the error policy, notes on failures;
* ``timers``: deadlines, stealing and harvesting;
* ``clock``: the time the core reads (a fake one in tests);
* ``core``: the state machine that ties them together;
* ``thread``: the driver that runs it in a dispatcher thread;
* ``evloop``: the driver that runs it on its backend's event loop;
* ``facade``: what the consumer sees of a run, whichever driver runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .._backends._base import Backend
from .._batching import Memory
from .._source import Source
from .evloop import LoopRun
from .facade import Run
from .options import Options
from .thread import ThreadRun

__all__ = ["Options", "Run", "new_run"]


def new_run(fn: Callable[[Any], Any], items: Iterator[Any] | Source, total: int | None,
            backend: Backend, *, owns_backend: bool, options: Options,
            memory: Memory | None = None) -> Run:
    """A run of ``fn`` over ``items`` (not started), with the driver that suits
    ``backend``: on its event loop where it reports there, else in a thread.
    ``memory``: a Pool's batch sizes learned per function."""
    if backend.loop_driven:
        if owns_backend:
            backend.start()   # non-blocking for such a backend: it finds its loop
        loop = backend.event_loop()
        if loop is not None:
            return LoopRun(fn, items, total, backend, loop, owns_backend=owns_backend,
                           options=options, memory=memory)
    return ThreadRun(fn, items, total, backend, owns_backend=owns_backend, options=options,
                     memory=memory)
