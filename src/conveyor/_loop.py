"""conveyor's event loop: one per process, for sync code that runs coroutine functions.

::

    caller threads                     conveyor-loop (daemon thread)
    conveyor.map(async_fn, ...) ---+    one event loop, started on first use,
    Pool(backend="asyncio")      --+--> kept until the interpreter exits:
    run_coroutine(client.aclose())-+    every map's worker tasks run here

A sync ``conveyor.map`` of a coroutine function, a ``Pool(backend="asyncio")``
and :func:`run_coroutine` share this loop, so objects bound to a loop (an
``httpx.AsyncClient``'s connections, an ``aiohttp.ClientSession``) made by one
call keep working in the next one. (With a loop per call, the second call
failed with "Event loop is closed".) ``conveyor.amap`` does not use it: its
coroutines run on the caller's own loop.

**Sharing.** Maps from any number of threads run on the loop at once; each
backend keeps its own state, touched only on the loop. A coroutine that blocks
(``time.sleep`` inside ``async def``, CPU work without an ``await``) stalls
every map on the loop, and their timeouts, until it yields.

**Exit.** At interpreter exit (an ``atexit`` hook, which runs after the pools'
own exit hook and after non-daemon threads, which may still be mapping, have
been joined): the tasks left on the loop are cancelled and given
``_TASK_GRACE`` seconds to end, async generators are finalised, the default
executor is shut down, and the loop is closed. A loop that does not wind down
within ``_EXIT_GRACE`` seconds (a coroutine that never yields) is left to end
with the process, whose daemon thread it runs on.

**Fork.** A forked child holds a copy of the loop but not its thread, and the
copy's selector is the parent's (closing it would unregister the parent's
wake-up pipe): the child forgets it, never closing it, and starts a loop of
its own on first use.

**Nesting.** Sync code running *on* the loop (a coroutine that calls a sync
``conveyor.map`` of a coroutine function) would wait for work the blocked
loop must do: such a backend runs a loop of its own (a ``LoopThread``) instead.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import inspect
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._backends._base import WAIT_SLICE, join, wait_event

__all__ = ["LoopThread", "current_shared_loop", "on_shared_loop", "run_coroutine",
           "shared_loop"]

T = TypeVar("T")

_TASK_GRACE = 2.0   # seconds cancelled tasks get to end at exit
_EXIT_GRACE = 5.0   # seconds the whole wind-down may take before the loop is left


class LoopThread:
    """An event loop running forever in a daemon thread of its own.

    The thread closes the loop once it stops, so a loop stopped from the loop
    itself (``stop_soon`` in a callback) needs nobody to wait for it.
    """

    __slots__ = ("loop", "thread")

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            try:
                self.loop.run_forever()
            finally:
                self.loop.close()

        self.thread = threading.Thread(target=serve, name=name, daemon=True)
        self.thread.start()
        wait_event(ready)

    def stop_soon(self) -> None:
        """Stop the loop once the callbacks now due have run (from any thread)."""
        with contextlib.suppress(RuntimeError):   # closed already
            self.loop.call_soon_threadsafe(self.loop.stop)

    def stop(self) -> None:
        """Stop the loop and wait for its thread to close it (its tasks must have ended)."""
        self.stop_soon()
        join(self.thread)


_lock = threading.Lock()
_shared: LoopThread | None = None
_exited = False
#: A forked child's copies of its parent's loops: referenced, so never
#: collected (whose __del__ could close the parent's selector), and never closed.
_inherited: list[asyncio.AbstractEventLoop] = []


def shared_loop() -> asyncio.AbstractEventLoop:
    """The process's loop, started on the first call (from any thread).

    After the interpreter's exit hook has closed it, the closed loop is
    returned (the backends report the work it cannot take as dropped); if it
    was never started, a ``RuntimeError`` says the interpreter is exiting.
    """
    global _shared
    with _lock:
        if _shared is None:
            if _exited:
                raise RuntimeError("conveyor's event loop has shut down: the interpreter "
                                   "is exiting")
            _shared = LoopThread("conveyor-loop")
        return _shared.loop


def current_shared_loop() -> asyncio.AbstractEventLoop | None:
    """The process's loop if it has been started, else None (it is not started here)."""
    shared = _shared
    return None if shared is None else shared.loop


def on_shared_loop() -> bool:
    """Is the calling thread the one running the shared loop?"""
    shared = _shared
    return shared is not None and shared.thread is threading.current_thread()


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on conveyor's event loop and return its result.

    The loop is the one a sync ``conveyor.map`` of a coroutine function and a
    ``Pool(backend="asyncio")`` run on, so this is how sync code makes, uses
    and closes an object bound to that loop::

        conveyor.run_coroutine(client.aclose())

    Waits until the coroutine ends and raises what it raises. Ctrl-C while it
    waits cancels the coroutine and raises ``KeyboardInterrupt``. Raises
    ``TypeError`` if ``coro`` is not a coroutine object (call the function:
    ``run_coroutine(fn(args))``), and ``RuntimeError`` if called from code
    already running on that loop (``await`` the coroutine there instead).
    """
    _check_coroutine(coro)
    if on_shared_loop():
        coro.close()
        raise RuntimeError("conveyor.run_coroutine was called on conveyor's own event loop "
                           "(from a coroutine that conveyor runs), where waiting for it "
                           "would block the loop for good; await the coroutine instead")
    loop = shared_loop()
    # Not asyncio.run_coroutine_threadsafe: a Ctrl-C landing after it has
    # scheduled the coroutine but before it returns its future would leave the
    # task running with nobody to cancel it. This future exists first.
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()
    try:
        try:
            loop.call_soon_threadsafe(_start, loop, coro, fut)
        except RuntimeError:   # the loop is closed (the interpreter exits)
            coro.close()
            raise
        while True:   # in slices: Ctrl-C must land
            try:
                return fut.result(WAIT_SLICE)
            except concurrent.futures.TimeoutError:
                continue
    except BaseException:
        fut.cancel()   # the loop cancels the task, or never starts it
        raise


def _start(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T],
           fut: concurrent.futures.Future[T]) -> None:
    """On the loop: run ``coro`` as a task whose outcome ``fut`` gets, and which
    cancelling ``fut`` cancels."""
    if fut.cancelled():
        coro.close()   # cancelled before it started
        return
    task = loop.create_task(coro)

    def cancel_task(f: concurrent.futures.Future[T]) -> None:
        if f.cancelled():
            with contextlib.suppress(RuntimeError):   # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)

    def settle(t: asyncio.Task[T]) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled
            if t.cancelled():
                fut.cancel()
            elif t.exception() is not None:
                fut.set_exception(t.exception())
            else:
                fut.set_result(t.result())

    task.add_done_callback(settle)
    fut.add_done_callback(cancel_task)


def _check_coroutine(obj: object) -> None:
    if not asyncio.iscoroutine(obj):
        hint = " (call it: run_coroutine(fn(...)))" if inspect.iscoroutinefunction(obj) else ""
        raise TypeError(f"conveyor.run_coroutine needs a coroutine object, got {obj!r}{hint}")


# -- exit and fork -------------------------------------------------------------

async def _wind_down(loop: asyncio.AbstractEventLoop) -> None:
    """On the loop, at exit: what ``asyncio.run`` does at its end, with bounded waits."""
    deadline = loop.time() + _TASK_GRACE
    await _cancel_all(loop, deadline)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()
    # Closing a run cancelled above schedules one more task (the backend's aclose).
    await _cancel_all(loop, deadline)


async def _cancel_all(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    """Cancel the other tasks, and those they start meanwhile, until none is left
    or ``deadline`` (loop time) passes."""
    me = asyncio.current_task()
    while loop.time() < deadline:
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        if not tasks:
            return
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=deadline - loop.time())
        for t in tasks:
            # As asyncio.run does: a task that failed on its way out is reported.
            if t.done() and not t.cancelled() and t.exception() is not None:
                loop.call_exception_handler({
                    "message": "unhandled exception during conveyor's event loop shutdown",
                    "exception": t.exception(), "task": t})


def _at_exit() -> None:
    global _exited
    with _lock:
        _exited = True
        shared = _shared
    if shared is None or shared.loop.is_closed():
        return
    try:
        asyncio.run_coroutine_threadsafe(_wind_down(shared.loop), shared.loop) \
            .result(_EXIT_GRACE)
    except (concurrent.futures.TimeoutError, KeyboardInterrupt):
        return   # the loop is blocked (or Ctrl-C again): leave it to the process's end
    shared.stop_soon()
    shared.thread.join(_EXIT_GRACE)


def _forget_after_fork() -> None:
    global _lock, _shared
    _lock = threading.Lock()   # another thread may have held it at the fork
    if _shared is not None:
        _inherited.append(_shared.loop)
        _shared = None


# After the pools' hook (threading's exit hooks run first) and after the
# non-daemon threads, which may still be running maps on the loop, are joined.
atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
