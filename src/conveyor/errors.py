"""conveyor's exceptions.

Every exception conveyor raises *itself* derives from :class:`ConveyorError`,
so ``except conveyor.errors.ConveyorError`` catches anything the library adds
on top of your own code. Exceptions raised *by your function* reach you as
their own type (a ``KeyError`` stays a ``KeyError``), with a note saying which
item failed and, for work that ran in another process, the worker-side
traceback attached as ``__cause__``.

Argument checks raise the ordinary ``TypeError`` / ``ValueError`` (those are
the user's mistakes, not failures of a run), before any work starts.

Warnings: :class:`UnreadResultsWarning` (a map whose results were never read)
and :class:`BlockingCallWarning` (a sync map consumed inside a coroutine), both
``RuntimeWarning`` subclasses, so that Python shows them by default and a
filter can name exactly one of them.
"""

from __future__ import annotations

import pickle
from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = [
    "BlockingCallWarning",
    "ConveyorError",
    "NotPicklable",
    "PoolClosed",
    "RemoteTraceback",
    "ResultsConsumed",
    "TaskTimeout",
    "UnreadResultsWarning",
    "WorkerCrashed",
    "WorkerInitError",
    "item_index",
]


class ConveyorError(Exception):
    """Root of every exception conveyor raises on its own account."""


class TaskTimeout(ConveyorError, TimeoutError):
    """Raised in place of a task's result when it ran longer than ``timeout=``.

    Who stops what: on the asyncio backend the coroutine is cancelled; on the
    thread backend the call cannot be interrupted, so it is *abandoned*: its
    worker thread is replaced at once, and the abandoned call runs on until it
    returns, its result discarded. Subject to ``retries`` like any failure.
    """

    def __init__(self, message: str, *, index: int | None = None,
                 seconds: float | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.seconds = seconds

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_timeout, (str(self), self.index, self.seconds))


def _rebuild_timeout(message: str, index: int | None, seconds: float | None) -> TaskTimeout:
    return TaskTimeout(message, index=index, seconds=seconds)


class WorkerCrashed(ConveyorError, BrokenProcessPool):
    """Raised in place of a task's result when the worker running it died.

    Raised by backends whose workers can die under a task (processes, cluster
    workers): the task that was running is failed with this error, the worker
    is replaced and the run goes on. ``pid`` and ``exitcode`` (negative: the
    signal number) say which worker and how it ended, where known.

    It is also a ``concurrent.futures.process.BrokenProcessPool`` (and so a
    ``BrokenExecutor``), so code written for ``ProcessPoolExecutor`` that
    catches those still catches it. Unlike there, only the call that was
    running fails: the pool itself is not broken.

    The scheduler raises it too for an item whose outcome was lost (its
    worker died after running it, or with its result) more often than it
    runs such an item again (``stats.rerun`` counts those re-runs).
    """

    def __init__(self, message: str, *, pid: int | None = None,
                 exitcode: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crashed, (str(self), self.pid, self.exitcode))


def _rebuild_crashed(message: str, pid: int | None, exitcode: int | None) -> WorkerCrashed:
    return WorkerCrashed(message, pid=pid, exitcode=exitcode)


class WorkerInitError(ConveyorError, BrokenExecutor):
    """Raised in place of every task of a worker whose ``initializer`` failed.

    The initializer's own exception is the ``__cause__``. The run's error
    policy applies to these failures like to any other. It is also a
    ``concurrent.futures.BrokenExecutor``, which the stdlib executors raise
    when an initializer fails.
    """


class NotPicklable(ConveyorError, pickle.PicklingError, TypeError):
    """Something had to cross to or from a worker process and could not be pickled.

    Raised by ``map``/``Pool.submit`` before any work starts for a function
    (or ``submit`` arguments) that cannot be sent to worker processes, naming
    the object that stops it. Inside a run it fails just the task concerned
    (and follows ``on_error``): an item that cannot be sent, a result that
    cannot be sent back, or an exception that cannot be (then the message
    gives its type and text, and the worker-side traceback is the
    ``__cause__``). ``type_name`` is the type of the object that failed.

    It is also a ``pickle.PicklingError``, what the stdlib's
    ``ProcessPoolExecutor`` delivers for such objects.
    """

    def __init__(self, message: str, *, type_name: str | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_not_picklable, (str(self), self.type_name))


def _rebuild_not_picklable(message: str, type_name: str | None) -> NotPicklable:
    return NotPicklable(message, type_name=type_name)


class PoolClosed(ConveyorError, RuntimeError):
    """Raised by :class:`conveyor.Pool` methods called after ``close()``."""


class ResultsConsumed(ConveyorError, RuntimeError):
    """Raised by ``iter()`` (a ``for`` loop) on results that have already ended.

    A :class:`~conveyor.Results`, :class:`~conveyor.AsyncResults` or running
    :class:`~conveyor.Pipeline` hands each result out once: once it has been
    iterated to its end (or ended with an error, or was closed), a new loop
    over it would silently get nothing, so it raises this instead. Keep the
    values if you need them twice (``values = list(conveyor.map(...))``). A
    loop left early (``break``) is not an end: the next loop goes on where it
    stopped, as with a generator or a file.
    """


class UnreadResultsWarning(RuntimeWarning):
    """Warned when a map's results are dropped without ever being read.

    A map runs at most ``window`` items ahead of what is read, so a
    ``conveyor.map(save, items)`` whose results nobody reads stops after a
    window, and dropping it (garbage collection, or the interpreter's exit)
    stops the run. Warned, at the line that called ``map``/``amap``/
    ``Pool.map``/``stream``, for a :class:`~conveyor.Results`,
    :class:`~conveyor.AsyncResults` or pipeline that was never iterated,
    waited for (``wait()``) or closed (``close()``, a ``with`` block). A
    ``RuntimeWarning``, as Python's own "coroutine ... was never awaited":
    shown by default, unlike a ``ResourceWarning``.
    """


class BlockingCallWarning(RuntimeWarning):
    """Warned when a sync map is consumed inside a coroutine: it blocks the event loop.

    Iterating a :class:`~conveyor.Results` (or a pipeline, or calling
    ``wait()``) waits in the calling thread; inside a coroutine, that thread
    runs the event loop, whose other tasks then stand still. Use
    ``async for r in conveyor.amap(...)`` there. Not warned at the top level
    of a notebook cell (or of the ``python -m asyncio`` REPL), where blocking
    the kernel's loop for the cell's duration is what a cell does anyway.
    """


class RemoteTraceback(Exception):
    """Carries the traceback of a task that failed where it ran (a worker process).

    Attached as ``__cause__`` of a task's exception when the exception crossed
    a process boundary and lost its own frames; printing the exception then
    shows the lines of your function that failed. ``tb`` is the traceback's
    text. The worker sends the frames only; their source lines are looked up
    here, when ``tb`` is first read, so that functions defined in a notebook
    cell or with ``python -c`` (whose source only this process has) show them.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self._tb: str | None = tb
        self._frames: Any = None

    @classmethod
    def _from_frames(cls, frames: Any) -> RemoteTraceback:
        """Formatted when first read, from what ``conveyor._tracebacks.extract`` gave."""
        self = cls("")
        self._tb, self._frames = None, frames
        return self

    @property
    def tb(self) -> str:
        """The remote traceback's text, formatted (with this process's source
        lines) when first read."""
        if self._tb is None:
            from ._tracebacks import format_remote

            try:
                self._tb = format_remote(self._frames)
            except Exception as exc:   # data from another process: never fail to print
                self._tb = f"(the remote traceback could not be formatted: {exc!r})"
            self._frames = None
            _ARGS.__set__(self, (self._tb,))
        return self._tb

    @property
    def args(self) -> tuple[object, ...]:
        """``(tb,)``, as for ``RemoteTraceback(text)``: pickling and ``str()`` see the text."""
        self.tb   # noqa: B018 - formats it: args hold the text, as for RemoteTraceback(text)
        args: tuple[object, ...] = _ARGS.__get__(self)
        return args

    @args.setter
    def args(self, value: tuple[object, ...]) -> None:
        _ARGS.__set__(self, value)

    def __str__(self) -> str:
        return "\n\n" + self.tb

    def __repr__(self) -> str:
        return f"RemoteTraceback({self.tb!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (RemoteTraceback, (self.tb,))


_ARGS: Any = BaseException.__dict__["args"]


def item_index(exc: BaseException) -> int | None:
    """The input position (0-based) of the item whose task raised ``exc``.

    conveyor records it on every exception it hands back from a task (raised
    with ``on_error="raise"`` or returned with ``on_error="return"``); ``None``
    for an exception that did not come out of a conveyor task.
    """
    value = getattr(exc, "__conveyor_index__", None)
    return value if isinstance(value, int) else None
