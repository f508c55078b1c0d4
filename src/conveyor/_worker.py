"""What runs inside a worker: the process worker's main loop, and ``worker_state``.

A process worker is a fresh interpreter started by ``_backends.process``::

    python -u -c BOOTSTRAP /path/to/_worker.py TASK_R RESULT_W LIFELINE_R SLOT_FD CTL_R

The bootstrap loads *this file* as the module ``_conveyor_worker`` (also
registered as ``conveyor._worker``) without importing the ``conveyor``
package (whose import pulls in asyncio: tens of milliseconds a worker would
pay at every start). So this module imports only what starts fast, and
everything the parent pickles for a worker refers to
names that exist here or in the user's own modules.

Protocol (each message: an 8-byte little-endian length, then a pickle):

* parent -> worker, first: ``(sys_path, initializer_and_args | None,
  max_tasks | None)``; then one message per batch: ``(bid, fn_key, fn_bytes |
  None, timed, items)``. End of file on TASK_R: exit.
* worker -> parent: ``(bid, status, start, n, extra, pickle of (values,
  records))``: the ``n`` outcomes of positions ``start...`` of the batch,
  ``records`` describing the failed ones (see ``_record``). A batch ends with
  one ``STATUS_DONE`` reply (``extra``: seconds busy), after
  ``STATUS_PARTIAL`` ones if it ran long.
* parent -> worker on CTL_R (read by a control thread while the main thread
  runs tasks): ``b"S"`` + 8-byte batch id: give back the items not started
  yet; the reply (``STATUS_STOLEN``) says how many it keeps (``extra``).

The slot (a small shared-memory page, SLOT_FD) says what the worker is doing
without a message per item: ``q[0]`` the batch id it runs, ``q[1]`` the position
of the item it runs, and ``d[2]`` since when (``time.monotonic``, for timed
batches only). The parent reads it to time items and to know which item a dead worker
was running.

LIFELINE_R is the read end of a pipe nobody writes to: when the parent dies,
even by SIGKILL, the read returns and the worker kills its process group
(itself and whatever its tasks started), so no worker outlives its parent.
"""

from __future__ import annotations

import contextvars
import os
import signal
import sys
import time

TYPE_CHECKING = False   # not typing's: importing typing costs a worker milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

try:   # the C pickler directly: importing pickle.py costs a worker milliseconds
    from _pickle import dumps, loads
except ImportError:  # pragma: no cover - other interpreters
    from pickle import dumps, loads

__all__ = ["ALIAS", "Apply", "PassedFd", "Star", "cloudpickle_dumps", "cloudpickler", "main",
           "rebuild_proxy", "set_thread_state", "worker_state"]

#: This module's top-level name too. A class defined here is pickled as
#: ``_conveyor_worker.<name>``, which a worker resolves without importing the
#: conveyor package (the name ``conveyor._worker`` would import it).
ALIAS = "_conveyor_worker"
sys.modules.setdefault(ALIAS, sys.modules[__name__])

HEADER = 8
STATUS_DONE = 0       # the batch ended: the rest of its outcomes
STATUS_PARTIAL = 1    # outcomes of a batch that is still running
STATUS_INIT_FAILED = 2  # the initializer failed: records[0] describes it
STATUS_ITEMS_FAILED = 3  # the items could not be unpickled: records[0] says why
STATUS_STOLEN = 4     # reply to a steal request: how many items it keeps, or -1
FN_CACHE = 64         # functions a worker keeps (FIFO); the parent mirrors it
FLUSH_AFTER = 0.08    # seconds a batch runs before its outcomes are sent as they come
FLUSH_EVERY = 0.05    # seconds between those hand-overs

KIND_RAISED = 0       # the task raised; exc_bytes may be None (not picklable)
KIND_RESULT = 1       # the task returned something that cannot be pickled
KIND_ITEM = 2         # the item could not be rebuilt in the worker

_process_state: dict[str, Any] | None = None
_state_var: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "conveyor_worker_state")


def worker_state() -> dict[str, Any]:
    """A dict private to the worker running the current task.

    Fill it in the pool's ``initializer`` (load a model, open a connection)
    and read it from every task that runs on that worker::

        def load():
            conveyor.worker_state()["model"] = load_model()

        def score(x):
            return conveyor.worker_state()["model"](x)

        with conveyor.Pool(backend="process", initializer=load) as pool: ...

    One dict per worker process, per worker thread, or per worker coroutine
    (asyncio). It lives as long as its worker: with ``max_tasks_per_worker``,
    a fresh worker starts with an empty dict (and runs the initializer again).
    """
    if _process_state is not None:
        return _process_state
    try:
        return _state_var.get()
    except LookupError:
        raise RuntimeError("conveyor.worker_state() is only available in a task or an "
                           "initializer running on a conveyor worker") from None


def set_thread_state() -> None:
    """Give the calling worker thread or worker coroutine its own state dict."""
    _state_var.set({})


class Apply:
    """Calls ``fn(*args, **kwargs)`` for an item ``(args, kwargs)`` (``Pool.submit``).

    Defined here so that a process worker can unpickle it without importing
    the conveyor package.
    """

    __slots__ = ("__weakref__", "fn")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, packed: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        return self.fn(*packed[0], **packed[1])


Apply.__module__ = ALIAS


class Star:
    """Calls ``fn(*item)``: a map over several iterables, whose items are zipped tuples.

    Equal for equal functions, so that what a backend learned about ``fn``
    (its batch size) is found again by the next map of it.
    """

    __slots__ = ("__weakref__", "fn")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: tuple[Any, ...]) -> Any:
        return self.fn(*args)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.fn == self.fn

    def __hash__(self) -> int:
        return hash((type(self), self.fn))


Star.__module__ = ALIAS


class PassedFd:
    """A file descriptor the parent passed to this worker at its start (``pass_fds``).

    What multiprocessing's ``reduction.DupFd`` gives while conveyor pickles
    the initializer's arguments (see ``_backends._mpshare``): the pipe of a
    ``Queue``, the memory of a ``Value``, rebuilt here with ``detach()``.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (PassedFd, (self.fd,))

    def detach(self) -> int:
        return self.fd


PassedFd.__module__ = ALIAS
_authkey_given = False


def rebuild_proxy(authkey: bytes, rebuild: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Rebuild a ``multiprocessing.Manager()`` proxy the parent sent (see ``_backends._mpshare``).

    The proxy carries its manager's authkey. The first one also gives this
    worker the parent's ``current_process().authkey``, as every child of
    multiprocessing inherits it: a proxy that the manager itself returns (one
    held in a managed dict, say) authenticates with that. Not done at start:
    importing multiprocessing costs a worker ~15 ms.
    """
    global _authkey_given
    if not _authkey_given:
        from multiprocessing import process

        process.current_process().authkey = authkey
        _authkey_given = True
    return rebuild(*args)


rebuild_proxy.__module__ = ALIAS


# -- the process worker ---------------------------------------------------------

def _read_exact(fd: int, n: int) -> bytes | None:
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
    head = _read_exact(fd, HEADER)
    if head is None:
        return None
    n = int.from_bytes(head, "little")
    if n == 0:
        return b""
    return _read_exact(fd, n)


def write_message(fd: int, payload: bytes) -> None:
    data = memoryview(len(payload).to_bytes(HEADER, "little") + payload)
    while data:
        data = data[os.write(fd, data):]


_pickler: Any = None


def cloudpickle_dumps(obj: object) -> bytes:
    """``cloudpickle.dumps``, keeping the file names of functions sent by value.

    cloudpickle replaces a code object's file name with ``<dynamic-code>``
    (for reproducible payloads); conveyor keeps the real one, so that a
    traceback from a worker names the file and shows the lines that failed.
    """
    import io

    with io.BytesIO() as f:
        cloudpickler()(f, protocol=5).dump(obj)
        return f.getvalue()


def cloudpickler() -> Any:
    """The pickler class of ``cloudpickle_dumps`` (made at the first call)."""
    global _pickler
    if _pickler is None:
        import collections
        import types

        import cloudpickle

        reduce_code = cloudpickle.Pickler.dispatch_table[types.CodeType]

        def keep_file_name(code: types.CodeType) -> Any:
            rv = reduce_code(code)
            args = tuple(code.co_filename if a == "<dynamic-code>" else a for a in rv[1])
            return (rv[0], args, *rv[2:])

        class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
            dispatch_table = collections.ChainMap(  # noqa: RUF012 - as cloudpickle's
                {types.CodeType: keep_file_name}, cloudpickle.Pickler.dispatch_table)

        _pickler = Pickler
    return _pickler


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__
        return f"<{type(exc).__name__}: str() failed>"


def _type_name(obj: object) -> str:
    return _type_name_of(type(obj))


def _type_name_of(t: type) -> str:
    module = getattr(t, "__module__", "")
    return t.__qualname__ if module in ("builtins", "__main__", None) \
        else f"{module}.{t.__qualname__}"


class Unbuildable:
    """Stands for an exception that its pickle could not rebuild (see ``tolerant_loads``)."""

    def __init__(self, cls: type, args: tuple[Any, ...], error: BaseException) -> None:
        self.type_name = _type_name_of(cls)
        self.args = args
        self.error = error

    def __setstate__(self, state: Any) -> None:
        pass

    def describe(self) -> str:
        return (f"{self.type_name}{self.args!r:.200} cannot be rebuilt from its pickle: "
                f"{type(self.error).__name__}: {_safe_str(self.error)}")


class _ItemError(TypeError):
    pass


def tolerant_loads(data: bytes) -> Any:
    """``pickle.loads`` that rebuilds an exception it cannot rebuild as ``Unbuildable``.

    The classic case: ``class E(Exception): def __init__(self, a, b)`` pickles
    its ``args`` only, and ``E(a)`` fails. Used after ``loads`` failed, so
    that one such object fails its own task only, not its whole batch.
    """
    import io
    import pickle

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            cls = super().find_class(module, name)
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                return cls

            def build(*args: Any) -> Any:
                try:
                    return cls(*args)
                except Exception as exc:
                    return Unbuildable(cls, args, exc)
            return build

    return Unpickler(io.BytesIO(data)).load()


def _skip_unbuildable(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(x: Any) -> Any:
        if isinstance(x, Unbuildable):
            raise _ItemError(x.describe())
        return fn(x)
    return run


def _record(pos: int, exc: BaseException) -> tuple[int, int, bytes | None, str, str, str]:
    """``(pos, kind, pickled exception or None, type name, message, traceback)``."""
    if isinstance(exc, _ItemError):
        return (pos, KIND_ITEM, None, "", _safe_str(exc), "")
    import traceback

    frames = exc.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename == __file__:
        frames = frames.tb_next   # conveyor's own frames: the user's come next
    tb = "".join(traceback.format_exception(type(exc), exc, frames))
    exc.__traceback__ = None   # frames hold the task's locals: let them go
    exc_bytes: bytes | None
    try:
        exc_bytes = dumps(exc, 5)
        loads(exc_bytes)   # also rebuildable? (a custom __init__ may refuse its args)
    except Exception:
        try:
            exc_bytes = cloudpickle_dumps(exc)
            loads(exc_bytes)
        except Exception:
            exc_bytes = None
    return (pos, KIND_RAISED, exc_bytes, _type_name(exc), _safe_str(exc), tb)


def _encode(bid: int, status: int, start: int, values: list[Any],
            records: list[tuple[Any, ...]], extra: float) -> bytes:
    """A reply; an outcome that cannot be pickled becomes its task's error record.

    ``values`` are the outcomes of positions ``start...`` of the batch;
    ``records`` (by batch position) describe the failed ones.
    """
    n = len(values)
    return dumps((bid, status, start, n, extra, _outcomes(values, records, start)), 5)


def _outcomes(values: list[Any], records: list[tuple[Any, ...]], start: int) -> bytes:
    """Pickle ``(values, records)``, in a pickle of its own: the header around
    it always unpickles, even where these cannot be rebuilt."""
    try:
        return dumps((values, records), 5)
    except Exception:
        pass
    try:
        return cloudpickle_dumps((values, records))
    except Exception:
        pass
    failed = {r[0] - start for r in records}
    for i, value in enumerate(values):
        if i in failed:
            continue
        try:
            cloudpickle_dumps(value)
        except Exception as exc:
            values[i] = None
            records.append((start + i, KIND_RESULT, None, _type_name(value),
                            f"{type(exc).__name__}: {_safe_str(exc)}", ""))
    records.sort()
    return cloudpickle_dumps((values, records))


class _Current:
    """The batch the main thread is running, as the control thread sees it."""

    __slots__ = ("bid", "errors", "it", "out", "sent", "size", "t0")

    def __init__(self, bid: int, it: Any, size: int, t0: float) -> None:
        self.bid = bid
        self.it = it                 # shared with the main loop: stealing drains it
        self.size = size
        self.out: list[Any] = []     # outcomes so far (exceptions in place)
        self.errors: list[int] = []  # their failed positions (added before the outcome)
        self.sent = 0                # outcomes already sent to the parent
        self.t0 = t0


class _Worker:
    """The worker's state, shared by its main loop and its control thread."""

    def __init__(self, result_w: int) -> None:
        import _thread

        self.result_w = result_w
        self.lock = _thread.allocate_lock()   # one writer at a time; guards `current`
        self.current: _Current | None = None

    def send(self, payload: bytes) -> None:
        with self.lock:
            write_message(self.result_w, payload)

    def flush(self, cur: _Current, status: int, extra: float) -> None:
        """Send ``cur``'s outcomes not sent yet (lock held)."""
        out = cur.out
        start = cur.sent
        n = len(out)
        values = out[start:n]
        records = []
        for pos in cur.errors:
            if start <= pos < n:
                records.append(_record(pos, out[pos]))
                values[pos - start] = None
        cur.sent = n
        write_message(self.result_w, _encode(cur.bid, status, start, values, records, extra))

    def control(self, ctl_r: int) -> None:
        """The control thread: steal requests, and early hand-over of outcomes.

        A batch running longer than FLUSH_AFTER sends what it has finished
        every FLUSH_EVERY seconds, so one slow item does not hold back the
        results of the items before it (and they are not lost if it crashes).
        """
        import select

        monotonic = time.monotonic
        while True:
            ready, _, _ = select.select([ctl_r], [], [], FLUSH_EVERY)
            if ready:
                command = _read_exact(ctl_r, 9)
                if command is None:
                    return   # the parent is gone (the lifeline handles it)
                bid = int.from_bytes(command[1:], "little", signed=True)
                with self.lock:
                    cur = self.current
                    if cur is None or cur.bid != bid:
                        continue   # that batch has ended: its STATUS_DONE is the answer
                    rest = list(cur.it)   # one C-level call: atomic for the main loop
                    k = cur.size - len(rest) if rest else -1
                    write_message(self.result_w, _encode(bid, STATUS_STOLEN, 0, [], [], k))
                continue
            with self.lock:
                cur = self.current
                if cur is not None and len(cur.out) > cur.sent and \
                        monotonic() - cur.t0 >= FLUSH_AFTER:
                    self.flush(cur, STATUS_PARTIAL, 0.0)


def _unloadable(exc: BaseException, where: str = "in the worker process",
                hint: str = "is its module importable there, with the same sys.path and "
                            "working directory?") -> Callable[[Any], Any]:
    """A stand-in for a function that could not be unpickled: each call says why."""
    message = (f"conveyor: the function could not be unpickled {where}: "
               f"{type(exc).__name__}: {_safe_str(exc)} ({hint})")

    def fail(_item: Any) -> Any:
        raise RuntimeError(message)
    return fail


def _lifeline(fd: int) -> None:
    try:
        os.read(fd, 1)   # returns when the parent's end closes: the parent is gone
    finally:
        os.killpg(0, signal.SIGKILL)


def main() -> None:
    global _process_state
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
    sys_path, init, max_tasks = loads(first)
    sys.path[:] = sys_path
    _process_state = {}
    init_record = None
    if init is not None:
        try:
            initializer, initargs = loads(init)
            initializer(*initargs)
        except BaseException as exc:
            init_record = _record(0, exc)
    _thread.start_new_thread(worker.control, (ctl_r,))
    fns: dict[int, Callable[[Any], Any]] = {}
    monotonic = time.monotonic
    done = 0
    while True:
        message = read_message(task_r)
        if message is None:
            return
        bid, key, fn_bytes, timed, items_bytes = loads(message)
        if fn_bytes is not None:   # first, always: the parent mirrors this cache
            try:
                fns[key] = loads(fn_bytes)
            except BaseException as exc:
                fns[key] = _unloadable(exc)
            if len(fns) > FN_CACHE:
                del fns[next(iter(fns))]
        if init_record is not None:
            worker.send(_encode(bid, STATUS_INIT_FAILED, 0, [], [init_record], 0.0))
            continue
        fn = fns[key]
        try:
            items = loads(items_bytes)
        except BaseException:
            try:   # one item's exception that cannot be rebuilt fails that item only
                items = tolerant_loads(items_bytes)
                fn = _skip_unbuildable(fn)
            except BaseException as exc:
                worker.send(_encode(bid, STATUS_ITEMS_FAILED, 0, [], [_record(0, exc)], 0.0))
                continue
        items_bytes = None
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
        worker.current = cur
        if timed:
            for i, x in enumerate(it):
                d[2] = monotonic()   # since, then position: the parent reads them in
                q[1] = i             # the other order, so it never sees a stale start
                try:
                    append(fn(x))
                except BaseException as exc:  # the task's own failure, whatever its type
                    errors.append(i)
                    append(exc)
        else:
            for i, x in enumerate(it):
                q[1] = i
                try:
                    append(fn(x))
                except BaseException as exc:  # the task's own failure, whatever its type
                    errors.append(i)
                    append(exc)
        busy = monotonic() - t0
        done += len(out)
        q[1] = -1   # no item runs while the outcomes are sent: not subject to timeout
        with worker.lock:
            worker.current = None
            worker.flush(cur, STATUS_DONE, busy)
        del cur, out, errors, append, items, it   # hold nothing while idle
        if max_tasks is not None and done >= max_tasks:
            return   # retire: the parent starts a fresh worker when it needs one
