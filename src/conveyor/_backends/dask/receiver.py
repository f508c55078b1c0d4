"""The dask backend's receiver thread: where finished tasks are handled.

A finished task's future goes from the client's event loop to this thread
(through a queue, which never refuses), and so does a completion reported
while ``submit`` runs (the caller may hold a lock its sink takes:
``Pool.submit`` does).
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["RECEIVER_EXIT", "Receiver"]

RECEIVER_EXIT = 10.0  # seconds the receiver thread may take to hand on what it holds


class Receiver:
    """One thread running the calls handed to it, in order (started on first use)."""

    def __init__(self, client: Any, done_callback: Callable[..., Any]) -> None:
        self._client = client
        self._done_callback = done_callback   # distributed.client.done_callback
        self._lock = threading.Lock()
        # None stops the thread
        self._arrivals: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def watch(self, fut: Any, then: Callable[[Any], None]) -> None:
        """Have ``then(fut)`` called on the receiver thread when ``fut`` ends.

        Not ``fut.add_done_callback``: its callbacks go from the client's event
        loop through a thread pool of dask's (``Future._cb_executor``), which
        the interpreter shuts down as it begins to exit, before the thread
        that closes the client after Ctrl-C has cancelled the futures; the
        loop then failed to hand them on ("cannot schedule new futures after
        interpreter shutdown", a second traceback after the KeyboardInterrupt).
        The same coroutine of dask's waits on the future here, and hands it to
        a queue, which never refuses.
        """
        self._client.loop.add_callback(self._done_callback, fut,
                                       functools.partial(self._arrive, then))

    def _arrive(self, then: Callable[[Any], None], fut: Any) -> None:
        # on the client's event loop: must not block
        self.hand_on(functools.partial(then, fut))

    def hand_on(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the receiver thread."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._receive, name="conveyor-dask-results", daemon=True)
                    self._thread.start()
        self._arrivals.put(call)

    def stop(self) -> None:
        """End the thread once it has run what it was handed (waiting for it, a
        while at most, unless called on it)."""
        thread = self._thread
        if thread is not None:
            self._arrivals.put(None)
            if thread is not threading.current_thread():
                thread.join(RECEIVER_EXIT)

    def _receive(self) -> None:
        while True:
            call = self._arrivals.get()
            if call is None:
                return
            call()
            # Hold nothing while waiting: the call holds a dask future, and a
            # future held here keeps its task (and result) on the cluster.
            call = None
