"""Records logged in worker processes and dask tasks, handled by the parent's logging.

::

    worker (process, or a dask task's thread)      parent (the backend's supervisor
                                                    or receiver thread)
    log.info(...) -> handler on the root logger:
      the record made plain (message formatted,      replay(): for each record, if
      exception as frames), with where it was        logging.getLogger(record.name)
      logged (batch, item position)                  is enabled for its level:
           |                                          .handle(record), so the parent's
           +-- before the batch's outcomes ------->  handlers and filters apply; with
               (process workers: sooner, see          record.conveyor_index and
               Forwarder)                             record.conveyor_pid

What is forwarded, the record's attributes, the levels and the switch
(``forward_logs``) are the user's guide's (``docs/guide/logging.md``); this
is how. Levels: ``snapshot()`` here, ``apply_levels()`` there, and
``replay()`` checks the current ones again. Nothing runs per item: the worker
looks for queued records once per batch (``_worker._Worker.flush``), and a
process worker imports ``logging`` only if its tasks do (``when_imported``:
the handler is installed by an import hook, as ``logging`` is first imported).

Loaded in process workers without the conveyor package (see
``_worker.sibling``): only ``sys`` is imported at module level.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False   # not typing's: a worker loads this module (see _worker)
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

__all__ = ["Forwarder", "capture", "item_index", "release", "replay", "snapshot",
           "when_imported"]

FLUSH_EVERY = 0.05   # seconds: records logged sooner than this after a send wait for the next
PLAIN = frozenset({str, int, float, bool, type(None)})
EXC = "_conveyor_exc"   # key of a record's exception frames on the wire

#: ``(levels by logger name, "" for the root; logging.disable's level)``
Levels = tuple[dict[str, int], int]


# -- in the parent -----------------------------------------------------------------

def snapshot() -> Levels:
    """This process's logger levels, for a worker to create the records it would handle."""
    import logging

    levels = {"": logging.getLogger().level}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels, logging.Logger.manager.disable


def item_index(batch: Any, pos: int | None) -> int | None:
    """The input index of ``batch.items[pos]``; None for a ``Pool.submit`` call,
    or outside an item."""
    base = getattr(batch, "group", None)
    base = getattr(base, "base", None)
    if not isinstance(base, int) or pos is None:
        return None
    index: int = base + batch.start + pos
    return index


def replay(data: bytes, index_of: Callable[[Any], int | None]) -> None:
    """Handle records sent by a worker, as this process's logging would have.

    ``index_of(where)`` gives the input index of the item a record was
    logged in (``where`` is what the worker said; None outside an item). A
    record that a handler or filter of this process fails on is reported on
    stderr as logging reports its own errors, and the others are handled.
    """
    import logging
    import pickle

    probe = logging.makeLogRecord({})   # this process's clock origin for relativeCreated
    start = probe.created - probe.relativeCreated / 1000
    # The record was made in the worker: LogRecord.__init__ would only look up
    # this thread, time and process again, to be overwritten (half the cost of
    # a record here). Unless a record factory of the user's makes them.
    plain_records = logging.getLogRecordFactory() is logging.LogRecord
    new = object.__new__
    for where, state in pickle.loads(data):
        try:
            chain = state.pop(EXC, None)
            if chain is not None:
                from ._tracebacks import format_remote

                state["exc_text"] = format_remote(chain).rstrip("\n")
            if plain_records:
                record = new(logging.LogRecord)
                record.__dict__.update(state)
            else:
                record = logging.makeLogRecord(state)
            record.relativeCreated = (record.created - start) * 1000
            record.conveyor_index = None if where is None else index_of(where)
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        except Exception:
            if logging.raiseExceptions:
                import traceback

                sys.stderr.write("--- Logging error (a record from a conveyor worker) ---\n")
                traceback.print_exc()


# -- in a worker -------------------------------------------------------------------

def when_imported(then: Callable[[ModuleType], None]) -> None:
    """Call ``then(logging)`` once ``logging`` is imported: now if it is, else
    right after its import, before the module that imports it goes on."""
    logging = sys.modules.get("logging")
    if logging is not None:
        then(logging)
    else:
        sys.meta_path.insert(0, _Hook(then))


class _Hook:
    """An import finder that only watches for ``logging``, then removes itself."""

    def __init__(self, then: Callable[[ModuleType], None]) -> None:
        self.then = then

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "logging":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Then(spec.loader, self.then)
                return spec
        return None


class _Then:
    """A module's loader, which calls ``then(module)`` once the module has run."""

    def __init__(self, loader: Any, then: Callable[[ModuleType], None]) -> None:
        self.loader = loader
        self.then = then

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The real loader from here on (importlib.reload, inspect, resources).
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        try:
            self.then(module)
        except Exception as exc:   # the task's import must not fail for it
            sys.stderr.write(f"conveyor: this worker's log records will not reach the parent "
                             f"process: {type(exc).__name__}: {exc}\n")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def apply_levels(logging: Any, levels: Levels) -> None:
    named, disable = levels
    for name, level in named.items():
        logging.getLogger(name or None).setLevel(level)
    if disable:
        logging.disable(disable)


def plain(logging: Any, record: Any) -> dict[str, Any]:
    """``record``'s attributes as plain data: its message formatted (so that
    arguments that cannot be pickled arrive as text), its exception as frames
    (formatted in the parent, see ``_tracebacks``), any other attribute that is
    not a str, int, float, bool or None as its ``repr()``; ``conveyor_pid``
    (and ``process``, which ``logging.logProcesses = False`` leaves None): this
    process's id."""
    import os

    state = dict(record.__dict__)
    state["conveyor_pid"] = state["process"] = os.getpid()
    state["msg"] = record.getMessage()
    state["args"] = None
    exc_info = state.get("exc_info")
    chain = None
    if exc_info:
        state["exc_info"] = None
        if not state.get("exc_text"):
            try:
                chain = _tracebacks().extract(exc_info[1], exc_info[2])
            except Exception:   # no exception (exc_info=True outside except), a hostile one
                state["exc_text"] = logging.Formatter().formatException(exc_info)
    for key, value in state.items():
        if type(value) not in PLAIN:
            state[key] = _text(value)
    if chain is not None:
        state[EXC] = chain
    return state


def _text(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<{type(value).__name__}: repr() failed: {type(exc).__name__}>"


def _tracebacks() -> Any:
    # Through _worker: a process worker loads it without the conveyor package.
    return sys.modules["_conveyor_worker"].sibling("_tracebacks")


def _handler(logging: Any, sink: Any) -> Any:
    class ForwardingHandler(logging.Handler):  # type: ignore[misc]
        """Hands every record it gets to conveyor (see ``conveyor._logs``)."""

        def emit(self, record: Any) -> None:
            try:
                sink.emit(logging, record)
            except Exception:
                self.handleError(record)

        def flush(self) -> None:   # logging.shutdown, as the worker exits
            sink.flush_now()

    return ForwardingHandler()


class Forwarder:
    """In a process worker: the records of the whole process, queued for the parent.

    ``where()`` says which item the calling thread runs (``(batch id,
    position)``, or None); ``write(entries)`` sends queued records (the
    worker's writer ``lock``, reentrant, held). The worker sends them before each reply
    (so a batch's records come before its outcomes), and its control thread
    every ``FLUSH_EVERY`` seconds. A record logged when none was sent for
    ``FLUSH_EVERY`` goes at once, so that a worker that dies right after
    logging (``os._exit``, a crash) has sent it; one that dies loses at most
    the records it logged in its last ``FLUSH_EVERY`` after the first.
    """

    def __init__(self, where: Callable[[], Any], write: Callable[[list[Any]], None],
                 lock: Any) -> None:
        self.where = where
        self.write = write
        self.lock = lock
        self.pending: Any = ()   # a deque once logging is imported
        self.sent = 0.0
        self.clock: Callable[[], float] = lambda: 0.0

    def install(self, logging: Any, levels: Levels) -> None:
        """``when_imported``'s callback: forward from now on."""
        import collections
        import time

        self.clock = time.monotonic
        self.pending = collections.deque()
        apply_levels(logging, levels)
        logging.getLogger().addHandler(_handler(logging, self))

    def emit(self, logging: Any, record: Any) -> None:
        state = plain(logging, record)
        if state.get("processName") == "MainProcess":   # this interpreter's, not the parent's
            state["processName"] = "conveyor-worker"
        self.pending.append((self.where(), state))
        if self.clock() - self.sent >= FLUSH_EVERY:
            self.flush_now()

    def flush(self) -> None:
        """Send what is queued (the lock held)."""
        pending = self.pending
        if pending:
            entries = [pending.popleft() for _ in range(len(pending))]
            self.sent = self.clock()
            self.write(entries)

    def flush_now(self) -> None:
        """Send what is queued, unless the lock stays taken (then it goes later)."""
        if self.pending and self.lock.acquire(timeout=1.0):
            try:
                self.flush()
            finally:
                self.lock.release()


# On a dask worker: one handler for the process; each run_batch call captures
# what its own thread logs (other tasks' threads, and dask's, are not ours).
_dask: dict[str, Any] = {}


class Capture:
    """The records one dask task's thread logs while it runs a batch."""

    __slots__ = ("entries", "outcomes")

    def __init__(self) -> None:
        self.entries: list[tuple[int | None, dict[str, Any]]] = []
        #: The batch's outcome list once its items run: its length is the
        #: position of the item running (no bookkeeping per item).
        self.outcomes: list[Any] | None = None

    def emit(self, logging: Any, record: Any) -> None:
        outcomes = self.outcomes
        self.entries.append((None if outcomes is None else len(outcomes),
                             plain(logging, record)))


class _DaskSink:
    def __init__(self, local: Any) -> None:
        self.local = local
        self.handler: Any = None

    def emit(self, logging: Any, record: Any) -> None:
        capture = getattr(self.local, "capture", None)
        if capture is not None:
            capture.emit(logging, record)
        elif self._alone(logging, record):
            # Ours is the only handler this record met: without it, logging
            # would have used its last resort (stderr), as the worker expects.
            last = logging.lastResort
            if last is not None and record.levelno >= last.level:
                last.handle(record)

    def _alone(self, logging: Any, record: Any) -> bool:
        logger = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self.handler for h in logger.handlers):
                return False
            logger = logger.parent if logger.propagate else None
        return True

    def flush_now(self) -> None:
        pass


def capture(levels: Levels | None) -> Capture:
    """Capture what the calling thread logs until :func:`release` (a dask task).

    ``levels``: the client's, applied to this worker process's loggers (a
    cluster conveyor started), or None to leave them as they are.
    """
    import logging
    import threading

    with _lock():
        sink = _dask.get("sink")
        if sink is None:
            sink = _dask["sink"] = _DaskSink(threading.local())
            sink.handler = _handler(logging, sink)
            logging.getLogger().addHandler(sink.handler)
        if levels is not None and _dask.get("levels") != levels:
            apply_levels(logging, levels)
            _dask["levels"] = levels
    cap = Capture()
    sink.local.capture = cap
    return cap


def release(cap: Capture) -> bytes | None:
    """Stop capturing (the thread that called :func:`capture`); the records, pickled."""
    import pickle

    _dask["sink"].local.capture = None
    return pickle.dumps(cap.entries, 5) if cap.entries else None


def _lock() -> Any:
    lock = _dask.get("lock")
    if lock is None:
        import threading

        lock = _dask.setdefault("lock", threading.Lock())
    return lock
