"""A process worker's main loop: what runs inside each worker process.

A worker is a fresh interpreter started by ``spawn``::

    python -u -c BOOTSTRAP /path/to/conveyor/_worker.py TASK_R RESULT_W LIFELINE_R SLOT_FD CTL_R

The bootstrap loads ``conveyor/_worker.py`` as the module ``_conveyor_worker``
(also registered as ``conveyor._worker``), then this file, without importing
the ``conveyor`` package (whose import pulls in asyncio: tens of milliseconds
a worker would pay at every start). So this module imports only what starts
fast, through ``sibling``, and everything the parent pickles for a worker
refers to names that exist there or in the user's own modules.

What crosses, and in which record, is ``conveyor._wire.records``'s docstring.
A batch's ``Task.items`` sent in one pickle are unpickled before the first
item starts (``Pos.ITEMS``). If that fails, the worker answers
``Status.ITEMS_FAILED`` before running anything; if it dies there, nothing
can say which item did it. Either way the parent sends the batch again as a
list of one pickle per item, unpickled as each item starts: one that fails
(or kills the worker) fails only its own item. Outcomes of a ``Status.DONE``
reply sent ``whole`` are kept until the next message (``Ask``, or the next
``Task``), in case the parent cannot unpickle them as one.

The slot (a small shared-memory page, SLOT_FD) says what the worker is doing
without a message per item: ``q[0]`` the batch id it runs, ``q[1]`` the
position of the item it runs (or a phase: ``Pos.*``), and ``d[2]`` since
when (``time.monotonic``, for timed batches only). The parent reads it to
time items and to know which item (or phase) a dead worker was in.

LIFELINE_R is the read end of a pipe nobody writes to: when the parent dies,
even by SIGKILL, the read returns and the worker kills its process group
(itself and whatever its tasks started), so no worker outlives its parent.
"""

from __future__ import annotations

import os
import signal
import sys
import time

# Not relative, not `import conveyor...`: these names are found in sys.modules,
# where the bootstrap put them, without importing the conveyor package.
from conveyor._worker import set_process_state, sibling

TYPE_CHECKING = False   # not typing's: importing typing costs a worker milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from conveyor._wire import pickles, records
else:   # loaded without the conveyor package: see _worker.sibling
    records = sibling("_wire.records")
    pickles = sibling("_wire.pickles")

try:   # the C pickler directly: importing pickle.py costs a worker milliseconds
    from _pickle import dumps, loads
except ImportError:  # pragma: no cover - other interpreters
    from pickle import dumps, loads

__all__ = ["FLUSH_AFTER", "FLUSH_EVERY", "main"]

FLUSH_AFTER = 0.08    # seconds a batch runs before its outcomes are sent as they come
FLUSH_EVERY = 0.05    # seconds between those hand-overs

Status = records.Status
Pos = records.Pos
read_message = records.read_message
write_message = records.write_message


def _reply(bid: int, status: int, start: int, values: list[Any],
           failures: list[records.Failure], busy: float, whole: bool = False,
           ) -> tuple[bytes, bool]:
    """A ``Reply`` pickled, and whether its outcomes are in one pickle (see
    ``pickles.pack_outcomes``): ``values`` are the outcomes of positions
    ``start...`` of the batch; ``failures`` (by batch position) describe the
    failed ones."""
    data, whole = pickles.pack_outcomes(values, failures, start, whole)
    return dumps(records.Reply(bid, status, start, data, whole, busy), 5), whole


class _Current:
    """The batch the main thread is running, as the control thread sees it."""

    __slots__ = ("bid", "errors", "it", "out", "sent", "size", "t0")

    def __init__(self, bid: int, it: Any, size: int, t0: float) -> None:
        self.bid = bid
        self.it = it                 # shared with the main loop: stealing drains it
        self.size = size
        self.out: list[Any] = []     # outcomes so far (failures in place)
        self.errors: list[int] = []  # their failed positions (added before the outcome)
        self.sent = 0                # outcomes already sent to the parent
        self.t0 = t0


class _Worker:
    """The worker's state, shared by its main loop and its control thread."""

    def __init__(self, result_w: int) -> None:
        import _thread

        self.result_w = result_w
        # One writer at a time; guards `current`. Reentrant: a task's __reduce__
        # run while its outcomes are sent may log, and a record may be sent at once.
        self.lock = _thread.RLock()
        self.current: _Current | None = None
        self.logs: Any = None   # a _logs.Forwarder, when the parent wants the records

    def send(self, payload: bytes) -> None:
        with self.lock:
            if self.logs is not None:
                self.logs.flush()
            write_message(self.result_w, payload)

    def write_logs(self, entries: list[Any]) -> None:
        """Send log records (lock held): see ``_logs.Forwarder``."""
        write_message(self.result_w, dumps(records.Logs(dumps(entries, 5)), 5))

    def flush(self, cur: _Current, status: int, busy: float, whole: bool = False,
              ) -> tuple[int, int, list[Any], list[Any], float] | None:
        """Send ``cur``'s outcomes not sent yet (lock held). With ``whole`` (see
        ``pickles.pack_outcomes``), what a resend needs if they went in one pickle."""
        if self.logs is not None:   # what the items logged comes before their outcomes
            self.logs.flush()
        out = cur.out
        start = cur.sent
        n = len(out)
        values = out[start:n]
        failures = []
        for pos in cur.errors:
            if start <= pos < n:
                failures.append(out[pos])   # made as the item failed (see pickles.failure)
                values[pos - start] = None
        cur.sent = n
        data, whole = _reply(cur.bid, status, start, values, failures, busy, whole)
        write_message(self.result_w, data)
        return (cur.bid, start, values, failures, busy) if whole else None

    def control(self, ctl_r: int) -> None:
        """The control thread: steal requests, and early hand-over of outcomes.

        A batch running longer than FLUSH_AFTER sends what it has finished
        every FLUSH_EVERY seconds, so one slow item does not hold back the
        results of the items before it (and they are not lost if it crashes).
        """
        import select

        monotonic = time.monotonic
        size = len(records.STEAL) + 8
        while True:
            ready, _, _ = select.select([ctl_r], [], [], FLUSH_EVERY)
            if ready:
                command = records.read_exact(ctl_r, size)
                if command is None:
                    return   # the parent is gone (the lifeline handles it)
                bid = int.from_bytes(command[len(records.STEAL):], "little", signed=True)
                with self.lock:
                    cur = self.current
                    if cur is None or cur.bid != bid:
                        continue   # that batch has ended: its Status.DONE is the answer
                    rest = list(cur.it)   # one C-level call: atomic for the main loop
                    keeps = cur.size - len(rest) if rest else None
                    write_message(self.result_w, dumps(records.Stolen(bid, keeps), 5))
                continue
            with self.lock:
                cur = self.current
                if cur is not None and len(cur.out) > cur.sent and \
                        monotonic() - cur.t0 >= FLUSH_AFTER:
                    self.flush(cur, Status.PARTIAL, 0.0)
                elif self.logs is not None:
                    self.logs.flush()


def _lifeline(fd: int) -> None:
    try:
        os.read(fd, 1)   # returns when the parent's end closes: the parent is gone
    finally:
        os.killpg(0, signal.SIGKILL)


def _forward_logs(worker: _Worker, q: Any, levels: Any) -> Any:
    """Forward what this process logs to the parent (see ``_logs.Forwarder``)."""
    import _thread

    main_thread = _thread.get_ident()

    def where() -> tuple[int, int] | None:   # the item the calling thread runs
        if _thread.get_ident() == main_thread:
            pos = q[1]
            if pos >= 0:
                return (q[0], pos)
        return None

    logs = sibling("_logs")
    forwarder = logs.Forwarder(where, worker.write_logs, worker.lock)
    logs.when_imported(lambda logging: forwarder.install(logging, levels))
    return forwarder
def main() -> None:
    task_r, result_w, life_r, slot_fd, ctl_r = (int(a) for a in sys.argv[2:7])
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle
    for fd in (task_r, result_w, life_r, slot_fd, ctl_r):
        os.set_inheritable(fd, False)   # processes the tasks start must not hold them
    import _thread
    import mmap

    _thread.start_new_thread(_lifeline, (life_r,))
    slot = mmap.mmap(slot_fd, mmap.PAGESIZE)
    q = memoryview(slot).cast("q")
    d = memoryview(slot).cast("d")
    worker = _Worker(result_w)

    first = read_message(task_r)
    if first is None:
        return
    start: records.Start = loads(first)
    sys.path[:] = start.sys_path
    max_tasks = start.max_tasks
    if start.levels is not None:   # before the initializer: what it logs is forwarded too
        worker.logs = _forward_logs(worker, q, start.levels)
    set_process_state()
    init_failure = None
    if start.init is not None:
        q[1] = Pos.INITIALIZER   # a death from here on is the initializer's doing
        try:
            initializer, initargs = loads(start.init)
            initializer(*initargs)
        except BaseException as exc:
            init_failure = pickles.failure(0, exc)
        q[1] = Pos.SENDING
    _thread.start_new_thread(worker.control, (ctl_r,))
    fns: dict[int, Callable[[Any], Any]] = {}
    monotonic = time.monotonic
    done = 0
    retired = False
    kept = None   # the last batch's outcomes, if they went in one pickle: see Ask
    while True:
        if retired and kept is None:
            return   # the parent starts a fresh worker when it needs one
        message = read_message(task_r)
        if message is None:
            return
        task = loads(message)
        if type(task) is records.Ask:
            if task.resend and kept is not None and kept[0] == task.bid:
                bid, begin, values, failures, busy = kept
                worker.send(_reply(bid, Status.DONE, begin, values, failures, busy)[0])
                del values, failures
            kept = None
            continue
        kept = None   # a new batch: the parent has the last one's outcomes
        bid = task.bid
        key = task.fn_key
        if task.fn is not None:   # first, always: the parent mirrors this cache
            q[1] = Pos.FUNCTION   # a death from here on is the function's doing
            q[0] = bid
            try:
                fns[key] = loads(task.fn)
            except BaseException as exc:
                fns[key] = pickles.unloadable(exc)
            if len(fns) > records.FN_CACHE:
                del fns[next(iter(fns))]
        if init_failure is not None:
            worker.send(_reply(bid, Status.INIT_FAILED, 0, [], [init_failure], 0.0)[0])
            continue
        fn = fns[key]
        timed = task.timed
        if type(task.items) is bytes:   # in one pickle
            q[1] = Pos.ITEMS   # a death from here on: the parent sends them one by one
            q[0] = bid
            try:
                items = loads(task.items)
            except BaseException:   # SystemExit too: the items' doing
                worker.send(_reply(bid, Status.ITEMS_FAILED, 0, [], [], 0.0)[0])
                continue
        else:   # one pickle per item, unpickled as the item starts (its slot position set)
            items = task.items
            fn = pickles.loading(fn)
        del task
        if max_tasks is not None and done + len(items) > max_tasks:
            items = items[:max_tasks - done]   # the parent runs the rest elsewhere
        t0 = monotonic()
        d[2] = t0      # since, position, batch: the parent reads them the other way
        q[1] = 0
        q[0] = bid
        it = iter(items)
        cur = _Current(bid, it, len(items), t0)
        out = cur.out
        errors = cur.errors
        append = out.append
        failure = pickles.failure
        worker.current = cur
        if timed:
            for i, x in enumerate(it):
                d[2] = monotonic()   # since, then position: the parent reads them in
                q[1] = i             # the other order, so it never sees a stale start
                try:
                    append(fn(x))
                except BaseException as exc:  # the task's own failure, whatever its type
                    errors.append(i)
                    append(failure(i, exc))
        else:
            for i, x in enumerate(it):
                q[1] = i
                try:
                    append(fn(x))
                except BaseException as exc:  # the task's own failure, whatever its type
                    errors.append(i)
                    append(failure(i, exc))
        busy = monotonic() - t0
        done += len(out)
        q[1] = Pos.SENDING   # no item runs while the outcomes are sent: not timed
        with worker.lock:
            worker.current = None
            kept = worker.flush(cur, Status.DONE, busy, whole=True)
        del cur, out, errors, append, items, it   # hold nothing while idle (but `kept`)
        retired = max_tasks is not None and done >= max_tasks
