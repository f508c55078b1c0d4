"""What runs on the dask workers: one batch per task (``run_batch``).

The task carries the pickled function, the pickled items and the
initializer as bytes, and returns a ``TaskResult`` with the outcomes packed
as the process worker packs them (``pickles.pack_outcomes``): dask never has
to pickle a user's object itself, and a failing item, result or exception
fails only its own item. One worker state and one initializer run per dask
worker process and backend (its ``token``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pickle import loads as _loads
from typing import Any

from ... import _logs, _worker
from ..._wire import pickles
from ..._wire.records import Ended, Failure, Status, TaskResult
from ...errors import NotPicklable

__all__ = ["FN_CACHE", "run_batch"]

FN_CACHE = 64          # functions a dask worker keeps unpickled (FIFO)

_fns: dict[str, Callable[[Any], Any]] = {}
_states: dict[str, tuple[dict[str, Any], Failure | None]] = {}
_state_lock = threading.Lock()


def run_batch(token: str, fn_key: str, fn_data: bytes, init: bytes | None,
              items_data: bytes, logs: tuple[Any, ...] | None = None) -> TaskResult:
    """Run one batch on a dask worker: ``TaskResult(ended, outcomes, log records)``.

    ``token`` names the conveyor backend (one worker state and one initializer
    run per dask worker process and token). ``logs``: None, or ``(levels,)``
    to capture what this call's thread logs (``levels``: see
    ``_logs.capture``); the records come back pickled (None if there are none).
    """
    if logs is None:
        return TaskResult(*_run_batch(token, fn_key, fn_data, init, items_data, None), None)
    capture = _logs.capture(*logs)
    try:
        ended, data = _run_batch(token, fn_key, fn_data, init, items_data, capture)
    finally:
        records = _logs.release(capture)
    return TaskResult(ended, data, records)


def _run_batch(token: str, fn_key: str, fn_data: bytes, init: bytes | None,
               items_data: bytes, capture: _logs.Capture | None) -> tuple[Ended, bytes]:
    fn = _fns.get(fn_key)
    if fn is None:
        try:
            fn = _loads(fn_data)
        except BaseException as exc:
            fn = pickles.unloadable(exc, "on the dask worker",
                                    "are its module and conveyor installed on the workers?")
        _fns[fn_key] = fn
        if len(_fns) > FN_CACHE:
            with contextlib.suppress(RuntimeError, StopIteration):   # another thread's eviction
                _fns.pop(next(iter(_fns)), None)
    state, init_failure = _worker_state(token, init)
    try:
        items = _loads(items_data)
    except BaseException as exc:
        try:   # one item's exception that cannot be rebuilt fails that item only
            items = pickles.tolerant_loads(items_data)
            fn = pickles.skip_unbuildable(fn)
        except BaseException:   # the client sends the items one by one instead
            # (loads's error: it names what failed, the tolerant retry's may not)
            return _pack(Status.ITEMS_FAILED, 0.0, [None], [_failure(0, exc)])
    if init_failure is not None:   # the initializer failed on this worker: every item fails
        n = len(items)
        return _pack(Status.INIT_FAILED, 0.0, [None] * n,
                     [init_failure.at(i) for i in range(n)])
    reset = _worker._state_var.set(state)
    values: list[Any] = []
    failures: list[Failure] = []
    if capture is not None:
        capture.outcomes = values   # its length: the position of the item running
    append = values.append
    t0 = time.monotonic()
    try:
        for i, x in enumerate(items):
            try:
                append(fn(x))
            except BaseException as exc:  # the task's own failure, whatever its type
                append(None)
                failures.append(_failure(i, exc))
    finally:
        _worker._state_var.reset(reset)
    return _pack(Status.DONE, time.monotonic() - t0, values, failures)


def _pack(status: int, busy: float, values: list[Any],
          failures: list[Failure]) -> tuple[Ended, bytes]:
    """One pickle per value not of the plain types (see ``pickles.pack_outcomes``),
    so that one the client cannot unpickle (a class from a module only the
    workers have) fails its own item, not the batch."""
    return Ended(status, busy), pickles.pack_outcomes(values, failures, 0)[0]


def _failure(pos: int, exc: BaseException) -> Failure:
    """``pickles.failure``, also for an exception it cannot record: one that
    refuses to have its ``__traceback__`` cleared (a frozen dataclass's
    ``__setattr__`` raises; its pickle could not rebuild it either), or whose
    trial unpickling raises ``SystemExit``. A ``NotPicklable`` naming it, with
    the task's traceback, stands in for it."""
    try:
        return pickles.failure(pos, exc)
    except BaseException as refusal:
        name = pickles.type_name(exc)
        stand_in = NotPicklable(
            f"the task raised {name}: {pickles.safe_str(exc)} -- that exception cannot "
            f"be sent back from the dask worker ({type(refusal).__name__}: "
            f"{pickles.safe_str(refusal)}), so this error stands in for it (its "
            "worker-side traceback is attached)", type_name=name)
        return pickles.failure(pos, stand_in.with_traceback(exc.__traceback__))


def _worker_state(token: str, init: bytes | None) -> tuple[dict[str, Any], Failure | None]:
    """This dask worker's state dict for ``token``; the initializer runs on first use."""
    with _state_lock:
        entry = _states.get(token)
        if entry is None:
            state: dict[str, Any] = {}
            failure = None
            if init is not None:
                reset = _worker._state_var.set(state)
                try:
                    initializer, initargs = _loads(init)
                    initializer(*initargs)
                except BaseException as exc:
                    failure = _failure(0, exc)
                finally:
                    _worker._state_var.reset(reset)
            entry = _states[token] = (state, failure)
        return entry
