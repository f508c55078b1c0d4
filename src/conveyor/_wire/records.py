"""The records that cross a process boundary, and their framing.

Process backend, on the task socket (parent -> worker), each message an
8-byte little-endian length, then a pickle:

* :class:`Start` first, once; then one :class:`Task` per batch, or an
  :class:`Ask` about the last batch's outcomes. End of file: the worker exits.

On the control socket (parent -> worker, read while tasks run): ``STEAL`` +
an 8-byte batch id: give back the items not started yet.

On the result pipe (worker -> parent), framed as above: :class:`Reply` (a
batch's outcomes, or why it ran none), :class:`Stolen` (the answer to a
steal), :class:`Logs` (records logged, before the reply that follows them).

Dask: ``run_batch`` takes the function, the initializer and the items as
bytes and returns a :class:`TaskResult`.

Outcomes travel as :class:`Outcomes` (see ``pickles.pack_outcomes``), each
failed item's as a :class:`Failure`. The classes are pickled by reference as
``_conveyor_wire.<name>``: a process worker resolves that name without
importing the conveyor package (``conveyor._wire.records`` would import it).
Only ``sys`` and ``os`` are imported here (a worker loads this module, see
``conveyor._worker.sibling``).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False   # not typing's: importing typing costs a worker milliseconds
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ALIAS", "FN_CACHE", "HEADER", "STEAL", "Ask", "Ended", "Failure", "Kind", "Logs",
           "Outcomes", "Pos", "Reply", "Start", "Status", "Stolen", "Task", "TaskResult",
           "read_message", "write_message"]

ALIAS = "_conveyor_wire"
sys.modules.setdefault(ALIAS, sys.modules[__name__])

HEADER = 8            # bytes of a message's length
STEAL = b"S"          # control message: + 8-byte batch id
FN_CACHE = 64         # functions a worker keeps (FIFO); the parent mirrors it


class Status:
    """How a batch's :class:`Reply` (or a dask task's :class:`Ended`) ends."""

    DONE = 0          # the batch ended: the rest of its outcomes
    PARTIAL = 1       # outcomes of a batch that is still running
    INIT_FAILED = 2   # the initializer failed: failures[0] describes it
    ITEMS_FAILED = 3  # the items could not be unpickled as one: send them one by one


class Kind:
    """What a :class:`Failure` describes."""

    RAISED = 0        # the task raised; ``exc`` may be None (not picklable)
    RESULT = 1        # the task returned something that cannot be pickled
    ITEM = 2          # the item could not be rebuilt in the worker
    FUNCTION = 3      # the function could not be rebuilt in the worker


class Pos:
    """``q[1]`` of a process worker's slot outside an item (see ``process.worker``)."""

    SENDING = -1      # the batch's items have run: its outcomes are being sent
    FUNCTION = -2     # unpickling the batch's function (q[0]: that batch)
    INITIALIZER = -3  # unpickling and running the pool's initializer
    ITEMS = -4        # unpickling the batch's items, sent in one pickle (q[0]: that batch)


class Start:
    """parent -> process worker, first: what it needs before any batch."""

    __slots__ = ("init", "levels", "max_tasks", "sys_path")

    def __init__(self, sys_path: list[str], init: bytes | None, max_tasks: int | None,
                 levels: Any) -> None:
        self.sys_path = sys_path
        self.init = init            # (initializer, initargs) pickled, or None
        self.max_tasks = max_tasks  # the worker exits after that many items
        self.levels = levels        # forward log records (see conveyor._logs); None: don't

    def __reduce__(self) -> tuple[Any, ...]:
        return (Start, (self.sys_path, self.init, self.max_tasks, self.levels))


class Task:
    """parent -> process worker: run batch ``bid``.

    ``items``: one pickle of the list of items (one memo: a class is named
    once), unpickled before the first item starts (``Pos.ITEMS``); or a list
    of one pickle per item, unpickled as each starts (timed batches, and a
    batch whose one pickle failed). ``fn``: the function's pickle, sent to a
    worker that does not hold ``fn_key`` yet (the parent mirrors its cache).
    """

    __slots__ = ("bid", "fn", "fn_key", "items", "timed")

    def __init__(self, bid: int, fn_key: int, fn: bytes | None, timed: bool,
                 items: bytes | list[bytes]) -> None:
        self.bid = bid
        self.fn_key = fn_key
        self.fn = fn
        self.timed = timed
        self.items = items

    def __reduce__(self) -> tuple[Any, ...]:
        return (Task, (self.bid, self.fn_key, self.fn, self.timed, self.items))


class Ask:
    """parent -> process worker, about batch ``bid``'s outcomes sent ``whole``:
    ``resend`` them one pickle per outcome (the tasks do not run again), or
    let them go (the parent has them; so does the next :class:`Task`)."""

    __slots__ = ("bid", "resend")

    def __init__(self, bid: int, resend: bool) -> None:
        self.bid = bid
        self.resend = resend

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ask, (self.bid, self.resend))


class Reply:
    """process worker -> parent: outcomes of positions ``start...`` of batch ``bid``.

    A batch ends with one ``Status.DONE`` reply (``busy``: seconds), after
    ``Status.PARTIAL`` ones if it ran long (sent by the control thread, one
    pickle per outcome: a resend would race with the ones sent after them).
    ``whole``: the outcomes that are not plain data are in one pickle, which
    the parent may fail to unpickle (it then sends ``Ask(bid, resend=True)``).
    """

    __slots__ = ("bid", "busy", "outcomes", "start", "status", "whole")

    def __init__(self, bid: int, status: int, start: int, outcomes: bytes, whole: bool,
                 busy: float) -> None:
        self.bid = bid
        self.status = status
        self.start = start
        self.outcomes = outcomes   # see pickles.pack_outcomes
        self.whole = whole
        self.busy = busy

    def __reduce__(self) -> tuple[Any, ...]:
        return (Reply, (self.bid, self.status, self.start, self.outcomes, self.whole,
                        self.busy))


class Stolen:
    """process worker -> parent: the answer to a steal: how many items of batch
    ``bid`` it keeps (it runs those; the rest are the parent's), or None."""

    __slots__ = ("bid", "keeps")

    def __init__(self, bid: int, keeps: int | None) -> None:
        self.bid = bid
        self.keeps = keeps

    def __reduce__(self) -> tuple[Any, ...]:
        return (Stolen, (self.bid, self.keeps))


class Logs:
    """process worker -> parent: pickled log records, with the batch id and
    position each was logged at (see ``conveyor._logs``)."""

    __slots__ = ("entries",)

    def __init__(self, entries: bytes) -> None:
        self.entries = entries

    def __reduce__(self) -> tuple[Any, ...]:
        return (Logs, (self.entries,))


class Failure:
    """One failed item: what the parent needs to rebuild its exception.

    ``exc``: the exception pickled (None if it cannot be, or cannot be
    rebuilt); ``tb``: its frames as ``_tracebacks.extract`` gives them (plain
    data), or a text saying why there are none.
    """

    __slots__ = ("exc", "kind", "message", "pos", "tb", "type_name")

    def __init__(self, pos: int, kind: int, exc: bytes | None, type_name: str,
                 message: str, tb: Any) -> None:
        self.pos = pos
        self.kind = kind
        self.exc = exc
        self.type_name = type_name
        self.message = message
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        return (Failure, (self.pos, self.kind, self.exc, self.type_name, self.message,
                          self.tb))

    def at(self, pos: int) -> Failure:
        """The same failure, for position ``pos``."""
        return Failure(pos, self.kind, self.exc, self.type_name, self.message, self.tb)


class Outcomes(tuple):  # type: ignore[type-arg]
    """``(values, packed, failures)``: see ``pickles.pack_outcomes``.

    A tuple (callers unpack it), pickled as one: the C pickler writes it
    without a call to a Python ``__reduce__``.
    """

    __slots__ = ()

    def __new__(cls, values: list[Any], packed: dict[int, bytes] | None,
                failures: list[Failure]) -> Outcomes:
        return tuple.__new__(cls, (values, packed, failures))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Outcomes, tuple(self))


class Ended:
    """How a dask task's batch ended: ``Status.DONE``, ``ITEMS_FAILED`` (its items
    could not be unpickled together) or ``INIT_FAILED``; seconds busy."""

    __slots__ = ("busy", "status")

    def __init__(self, status: int, busy: float) -> None:
        self.status = status
        self.busy = busy

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ended, (self.status, self.busy))


class TaskResult(tuple):  # type: ignore[type-arg]
    """dask worker -> client: ``(ended, outcomes, logs)``: an :class:`Ended`, the
    pickled :class:`Outcomes`, the pickled log records (or None)."""

    __slots__ = ()

    def __new__(cls, ended: Ended, outcomes: bytes, logs: bytes | None) -> TaskResult:
        return tuple.__new__(cls, (ended, outcomes, logs))

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskResult, tuple(self))


for _cls in (Start, Task, Ask, Reply, Stolen, Logs, Failure, Outcomes, Ended, TaskResult):
    _cls.__module__ = ALIAS


def read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``, or None at end of file."""
    data = os.read(fd, n)
    if len(data) == n or not data:
        return data or None
    buf = bytearray(data)
    while len(buf) < n:
        more = os.read(fd, n - len(buf))
        if not more:
            return None
        buf += more
    return bytes(buf)


def read_message(fd: int) -> bytes | None:
    """The next message on ``fd``, or None at end of file."""
    head = read_exact(fd, HEADER)
    if head is None:
        return None
    n = int.from_bytes(head, "little")
    if n == 0:
        return b""
    return read_exact(fd, n)


def frame(payload: bytes) -> bytes:
    """``payload`` with its length in front, as :func:`read_message` reads it."""
    return len(payload).to_bytes(HEADER, "little") + payload


def write_message(fd: int, payload: bytes) -> None:
    data = memoryview(frame(payload))
    while data:
        data = data[os.write(fd, data):]
