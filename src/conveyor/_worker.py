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
  max_tasks | None, levels | None)`` (``levels``: forward log records, see
  ``conveyor._logs``; None: don't); then one message per batch: ``(bid,
  fn_key, fn_bytes | None, timed, items)``. End of file on TASK_R: exit.
  ``items`` is one pickle of the list of items (one memo: a class is named
  once), unpickled before the first item starts (``POS_ITEMS``). If that
  fails, the worker answers ``STATUS_ITEMS_FAILED`` before running anything;
  if it dies there, nothing can say which item did it. Either way the parent
  sends the batch again as a list of one pickle per item, unpickled as each
  item starts: one that fails (or kills the worker) fails only its own item.
  Timed batches always go one per item: unpickling an item is part of its task.
* worker -> parent: ``(bid, status, start, n, extra, outcomes, whole)``: the
  ``n`` outcomes of positions ``start...`` of the batch, packed by
  :func:`pack_outcomes` (``records`` describe the failed ones, see
  ``_record``). A batch ends with one ``STATUS_DONE`` reply (``extra``:
  seconds busy), after ``STATUS_PARTIAL`` ones if it ran long. ``whole``: the
  ``STATUS_DONE`` outcomes that are not plain data are in one pickle, which
  the parent may fail to unpickle; the worker keeps them until the next
  message: ``(bid, RESEND, None, None, None)`` asks for them again one pickle
  per outcome (the tasks do not run again), ``(bid, RELEASE, ...)`` or the
  next batch lets them go. ``STATUS_PARTIAL`` outcomes (sent by the control
  thread while the batch runs, for slow items) always go one per outcome: a
  resend would race with the outcomes sent after them. ``STATUS_LOGS``
  (``outcomes``: pickled log records, with the batch id and position each was
  logged at) comes before any reply that follows the records it carries.
* parent -> worker on CTL_R (read by a control thread while the main thread
  runs tasks): ``b"S"`` + 8-byte batch id: give back the items not started
  yet; the reply (``STATUS_STOLEN``) says how many it keeps (``extra``).

The slot (a small shared-memory page, SLOT_FD) says what the worker is doing
without a message per item: ``q[0]`` the batch id it runs, ``q[1]`` the position
of the item it runs (or a phase: ``POS_SENDING``, ``POS_FUNCTION``,
``POS_INITIALIZER``, ``POS_ITEMS``), and ``d[2]`` since when (``time.monotonic``, for timed
batches only). The parent reads it to time items and to know which item (or
phase) a dead worker was in.

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
           "not_arguments", "rebuild_proxy", "set_thread_state", "sibling", "worker_state"]

#: This module's top-level name too. A class defined here is pickled as
#: ``_conveyor_worker.<name>``, which a worker resolves without importing the
#: conveyor package (the name ``conveyor._worker`` would import it).
ALIAS = "_conveyor_worker"
sys.modules.setdefault(ALIAS, sys.modules[__name__])

HEADER = 8
STATUS_DONE = 0       # the batch ended: the rest of its outcomes
STATUS_PARTIAL = 1    # outcomes of a batch that is still running
STATUS_INIT_FAILED = 2  # the initializer failed: records[0] describes it
STATUS_ITEMS_FAILED = 3  # the items could not be unpickled as one: send them one by one
STATUS_STOLEN = 4     # reply to a steal request: how many items it keeps, or -1
STATUS_LOGS = 5       # log records (see conveyor._logs): before the reply they precede
RESEND = -1           # ``fn_key`` of a message asking for the last outcomes again
RELEASE = -2          # ``fn_key`` of a message saying that the parent has them
FN_CACHE = 64         # functions a worker keeps (FIFO); the parent mirrors it
FLUSH_AFTER = 0.08    # seconds a batch runs before its outcomes are sent as they come
FLUSH_EVERY = 0.05    # seconds between those hand-overs

KIND_RAISED = 0       # the task raised; exc_bytes may be None (not picklable)
KIND_RESULT = 1       # the task returned something that cannot be pickled
KIND_ITEM = 2         # the item could not be rebuilt in the worker
KIND_FUNCTION = 3     # the function could not be rebuilt in the worker

# q[1] of the slot outside an item (see the module docstring):
POS_SENDING = -1      # the batch's items have run: its outcomes are being sent
POS_FUNCTION = -2     # unpickling the batch's function (q[0]: that batch)
POS_INITIALIZER = -3  # unpickling and running the pool's initializer
POS_ITEMS = -4        # unpickling the batch's items, sent in one pickle (q[0]: that batch)

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
        try:
            return self.fn(*args)
        except TypeError:
            error = not_arguments(args)
            if error is None:
                raise   # fn's own TypeError
            raise error from None

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.fn == self.fn

    def __hash__(self) -> int:
        return hash((type(self), self.fn))


Star.__module__ = ALIAS


def not_arguments(args: object) -> TypeError | None:
    """The error for an item that ``fn(*item)`` cannot spread (``starmap``), or None."""
    try:
        iter(args)   # type: ignore[call-overload]
    except TypeError:
        import reprlib  # only on this error path: workers start without it

        return TypeError(f"each item must be an iterable of the function's arguments "
                         f"(a tuple or a list, spread as fn(*item)), got "
                         f"{reprlib.repr(args)} ({type(args).__name__})")
    return None


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


def sibling(name: str) -> Any:
    """The module ``conveyor.<name>`` (one that imports only what starts fast).

    In a process worker, loaded from this file's directory without importing
    the conveyor package (see the module docstring); elsewhere, imported.
    """
    full = f"conveyor.{name}"
    module = sys.modules.get(full)
    if module is not None:
        return module
    if __name__ != ALIAS:
        import importlib

        return importlib.import_module(full)
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location(full, os.path.join(os.path.dirname(__file__), f"{name}.py"))
    assert spec is not None
    assert spec.loader is not None
    module = module_from_spec(spec)
    sys.modules[full] = module
    spec.loader.exec_module(module)
    return module


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
    except BaseException:  # a broken __str__
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


class _FunctionError(TypeError):
    pass


_tolerant: Any = None


def tolerant_loads(data: bytes) -> Any:
    """``pickle.loads`` that rebuilds an exception it cannot rebuild as ``Unbuildable``.

    The classic cases: ``class E(Exception): def __init__(self, a, b)``
    pickles its ``args`` only, and ``E(a)`` fails; a frozen dataclass
    exception refuses the state its pickle sets. Used after ``loads`` failed,
    so that such an object is described by its type and message. Only the
    *call* of an exception class (the REDUCE opcode) and the setting of its
    state (BUILD) are guarded: the class itself stays what it is, so a class
    that cloudpickle rebuilds by value keeps ``Exception`` as its base.
    """
    global _tolerant
    if _tolerant is None:
        import pickle

        base: Any = pickle._Unpickler   # the Python one: its opcodes can be overridden

        class Unpickler(base):  # type: ignore[misc]
            dispatch = dict(base.dispatch)  # noqa: RUF012 - as pickle's own

            def load_reduce(self) -> None:
                args = self.stack.pop()
                func = self.stack[-1]
                value: Any
                if isinstance(func, type) and issubclass(func, BaseException):
                    try:
                        value = func(*args)
                    except Exception as exc:
                        value = Unbuildable(func, args, exc)
                else:
                    value = func(*args)
                self.stack[-1] = value

            def load_build(self) -> None:
                inst = self.stack[-2]
                if not isinstance(inst, BaseException):
                    base.load_build(self)
                    return
                try:
                    base.load_build(self)
                except Exception as exc:
                    self.stack[-1] = Unbuildable(type(inst), inst.args, exc)

            dispatch[pickle.REDUCE[0]] = load_reduce
            dispatch[pickle.BUILD[0]] = load_build

        _tolerant = Unpickler
    import io

    return _tolerant(io.BytesIO(data)).load()


def _skip_unbuildable(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` over items from ``tolerant_loads``: one that holds an ``Unbuildable``
    (itself, or inside it: a submitted call's arguments) fails as ``_ItemError``."""
    def run(x: Any) -> Any:
        bad = _unbuildable_in(x)
        if bad is not None:
            raise _ItemError(bad.describe())
        return fn(x)
    return run


def _unbuildable_in(x: Any, depth: int = 4) -> Unbuildable | None:
    """The first ``Unbuildable`` in ``x`` or in its containers, ``depth`` levels down."""
    if isinstance(x, Unbuildable):
        return x
    if depth and type(x) in (tuple, list, set, frozenset, dict):
        for y in (x.values() if type(x) is dict else x):
            found = _unbuildable_in(y, depth - 1)
            if found is not None:
                return found
    return None


def _record(pos: int, exc: BaseException) -> tuple[int, int, bytes | None, str, str, Any]:
    """``(pos, kind, pickled exception or None, type name, message, traceback)``.

    The traceback: its frames as ``_tracebacks.extract`` gives them (plain
    data), or a text saying why there are none.

    Never raises, whatever ``exc`` does when it is formatted or pickled. The
    worker makes the record as the item fails, its position still in the
    slot: an exception whose unpickling (tried here, so that the parent is
    not the one to run it) kills the worker fails its own item only.
    """
    if isinstance(exc, _ItemError):
        return (pos, KIND_ITEM, None, "", _safe_str(exc), "")
    if isinstance(exc, _FunctionError):
        return (pos, KIND_FUNCTION, None, "", _safe_str(exc), "")
    frames = exc.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename == __file__:
        frames = frames.tb_next   # conveyor's own frames: the user's come next
    tb: Any
    try:   # frames, formatted in the parent, which has the source of notebook cells
        tb = sibling("_tracebacks").extract(exc, frames)
    except BaseException as error:   # a hostile __str__, __notes__...
        tb = f"(the traceback could not be formatted: {type(error).__name__})"
    # Frames hold the task's locals: let them go. Not `exc.__traceback__ = None`,
    # which a class with a strict __setattr__ (a frozen dataclass) refuses.
    BaseException.with_traceback(exc, None)
    exc_bytes: bytes | None
    try:
        exc_bytes = dumps(exc, 5)
        loads(exc_bytes)   # also rebuildable? (a custom __init__ may refuse its args)
    except BaseException:   # SystemExit from a __reduce__ is the object's fault too
        try:
            exc_bytes = cloudpickle_dumps(exc)
            loads(exc_bytes)
        except BaseException:
            exc_bytes = None
    return (pos, KIND_RAISED, exc_bytes, _type_name(exc), _safe_str(exc), tb)


def _encode(bid: int, status: int, start: int, values: list[Any],
            records: list[tuple[Any, ...]], extra: float, whole: bool = False,
            ) -> tuple[bytes, bool]:
    """A reply, and whether its outcomes are in one pickle (see :func:`pack_outcomes`):
    ``values`` are the outcomes of positions ``start...`` of the batch;
    ``records`` (by batch position) describe the failed ones."""
    n = len(values)
    data, whole = pack_outcomes(values, records, start, whole)
    return dumps((bid, status, start, n, extra, data, whole), 5), whole


_ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex})
_plain_pickler: Any = None


def plain_dumps(obj: object) -> bytes | None:
    """``obj`` pickled if it is plain data (builtin scalars and containers), else None.

    Plain data is what the C pickler writes without calling
    ``reducer_override``: it cannot fail to unpickle, so it travels as one
    pickle. Checking costs nothing per object of those types.
    """
    global _plain_pickler
    if _plain_pickler is None:
        try:
            from _pickle import Pickler
        except ImportError:  # pragma: no cover - other interpreters
            from pickle import Pickler

        class PlainOnly(Pickler):
            def reducer_override(self, obj: Any) -> Any:
                raise _NotPlain

        _plain_pickler = PlainOnly
    import io

    with io.BytesIO() as f:
        try:
            _plain_pickler(f, 5).dump(obj)
        except _NotPlain:
            return None
        return f.getvalue()


class _NotPlain(Exception):
    pass


def pack_outcomes(values: list[Any], records: list[tuple[Any, ...]], start: int,
                  whole: bool = False) -> tuple[bytes, bool]:
    """``(values, packed, records)`` pickled, for :func:`unpack_outcomes`; and ``whole``.

    Plain data is one pickle. Otherwise, with ``whole``, one pickle of all
    (``packed`` None, ``whole`` True, nothing changed): the fast way, which the
    receiver may fail to unpickle as a whole. Else, or if that cannot be
    pickled, plain values stay in ``values`` and any other one (not at a failed
    position) is pickled on its own into ``packed`` (position - ``start`` ->
    bytes), so that one the receiver cannot unpickle fails its own item, not
    the batch; a value that cannot be pickled becomes its task's error record;
    that result always unpickles, and ``values`` and ``records`` are changed
    in place.
    """
    data = plain_dumps((values, None, records))
    if data is not None:
        return data, False
    if whole:
        try:
            return dumps((values, None, records), 5), True
        except BaseException:   # e.g. a lock, a class of __main__: one by one says which
            pass
    failed = {r[0] - start for r in records}
    odd = [i for i, value in enumerate(values) if type(value) not in _ATOMS and i not in failed]
    packed: dict[int, bytes] = {}
    bad = False
    for i, (blob, exc) in zip(odd, dumps_each([values[i] for i in odd]), strict=True):
        if exc is None:
            packed[i] = blob
        else:
            records.append((start + i, KIND_RESULT, None, _type_name(values[i]),
                            f"{type(exc).__name__}: {_safe_str(exc)}", ""))
            bad = True
        values[i] = None
    if bad:
        records.sort(key=_position)
    return dumps((values, packed, records), 5), False


def dumps_each(objs: list[Any], pickler: Any = None,
               ) -> list[tuple[bytes, None] | tuple[bytes, BaseException]]:
    """Each object in a pickle of its own: ``(pickle, None)``, or ``(b"", error)``
    for one that neither ``pickler`` (default: the C pickler) nor cloudpickle
    can pickle. One pickler serves them all (its memo cleared between them)."""
    import io

    if pickler is None:
        try:
            from _pickle import Pickler as pickler
        except ImportError:  # pragma: no cover - other interpreters
            from pickle import Pickler as pickler
    out: list[tuple[bytes, None] | tuple[bytes, BaseException]] = []
    with io.BytesIO() as f:
        p = pickler(f, 5)
        for obj in objs:
            try:
                p.dump(obj)
                out.append((f.getvalue(), None))
            except BaseException:   # what a __reduce__ raises is the object's fault
                try:   # e.g. a class defined in a function, or in __main__
                    out.append((cloudpickle_dumps(obj), None))
                except BaseException as exc:
                    out.append((b"", exc))
            f.seek(0)
            f.truncate()
            p.clear_memo()
    return out


def _position(record: tuple[Any, ...]) -> int:
    position: int = record[0]
    return position


def unpack_outcomes(data: bytes, start: int, whole: bool = False,
                    ) -> tuple[list[Any], list[tuple[Any, ...]], dict[int, BaseException]] | None:
    """:func:`pack_outcomes`'s outcomes: ``(values, records, broken)``.

    A value that cannot be unpickled here is None in ``values``: an
    exception that cannot be rebuilt gets a record (``KIND_RESULT``); any
    other is in ``broken`` (position - ``start`` -> what unpickling raised,
    whatever it raised: ``SystemExit`` from a ``__reduce__`` is data, not a
    request to exit). Never raises for what one value does: outcomes packed
    ``whole`` that do not unpickle as one give None (ask for them one by one).
    """
    if whole:
        try:
            values, packed, records = loads(data)
        except BaseException:   # SystemExit too: the data's doing, not a request to exit
            return None
    else:
        values, packed, records = loads(data)   # plain values, bytes and records: it loads
    if not packed:
        return values, records, {}
    broken: dict[int, BaseException] = {}
    for i, blob in packed.items():
        try:
            values[i] = loads(blob)
            continue
        except BaseException as exc:
            error = exc
        try:   # an exception returned as a value, which its pickle cannot rebuild?
            value = tolerant_loads(blob)
        except BaseException:
            value = None
        if isinstance(value, Unbuildable):
            records.append((start + i, KIND_RESULT, None, value.type_name,
                            value.describe(), ""))
        else:
            broken[i] = error
    records.sort(key=_position)
    return values, records, broken


def load_item(blob: bytes) -> Any:
    """One item pickled on its own; ``_ItemError`` (its item fails) if it cannot be."""
    try:
        return loads(blob)
    except BaseException as exc:   # SystemExit too: the item's fault, not a request to exit
        error = exc
    try:
        value = tolerant_loads(blob)
    except BaseException:
        value = None
    if isinstance(value, Unbuildable):
        raise _ItemError(value.describe()) from None
    raise _ItemError(f"{type(error).__name__}: {_safe_str(error)}") from None


def _loading(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` over items pickled one by one (unpickled as each one starts)."""
    def run(blob: bytes) -> Any:
        return fn(load_item(blob))
    return run


class _Current:
    """The batch the main thread is running, as the control thread sees it."""

    __slots__ = ("bid", "errors", "it", "out", "sent", "size", "t0")

    def __init__(self, bid: int, it: Any, size: int, t0: float) -> None:
        self.bid = bid
        self.it = it                 # shared with the main loop: stealing drains it
        self.size = size
        self.out: list[Any] = []     # outcomes so far (failure records in place)
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
        write_message(self.result_w, dumps(
            (-1, STATUS_LOGS, 0, len(entries), 0.0, dumps(entries, 5), False), 5))

    def flush(self, cur: _Current, status: int, extra: float, whole: bool = False,
              ) -> tuple[int, int, list[Any], list[Any], float] | None:
        """Send ``cur``'s outcomes not sent yet (lock held). With ``whole`` (see
        :func:`pack_outcomes`), what a ``RESEND`` needs if they went in one pickle."""
        if self.logs is not None:   # what the items logged comes before their outcomes
            self.logs.flush()
        out = cur.out
        start = cur.sent
        n = len(out)
        values = out[start:n]
        records = []
        for pos in cur.errors:
            if start <= pos < n:
                records.append(out[pos])   # made as the item failed (see _record)
                values[pos - start] = None
        cur.sent = n
        data, whole = _encode(cur.bid, status, start, values, records, extra, whole)
        write_message(self.result_w, data)
        return (cur.bid, start, values, records, extra) if whole else None

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
                    write_message(self.result_w, _encode(bid, STATUS_STOLEN, 0, [], [], k)[0])
                continue
            with self.lock:
                cur = self.current
                if cur is not None and len(cur.out) > cur.sent and \
                        monotonic() - cur.t0 >= FLUSH_AFTER:
                    self.flush(cur, STATUS_PARTIAL, 0.0)
                elif self.logs is not None:
                    self.logs.flush()


def _unloadable(exc: BaseException, where: str = "in the worker process",
                hint: str = "is its module importable there, with the same sys.path and "
                            "working directory?") -> Callable[[Any], Any]:
    """A stand-in for a function that could not be unpickled: each call says why
    (a ``KIND_FUNCTION`` record: ``NotPicklable`` where the parent rebuilds it)."""
    message = (f"the function could not be unpickled {where}: "
               f"{type(exc).__name__}: {_safe_str(exc)} ({hint})")

    def fail(_item: Any) -> Any:
        raise _FunctionError(message)
    return fail


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
    sys_path, init, max_tasks, levels = loads(first)
    sys.path[:] = sys_path
    if levels is not None:   # before the initializer: what it logs is forwarded too
        worker.logs = _forward_logs(worker, q, levels)
    _process_state = {}
    init_record = None
    if init is not None:
        q[1] = POS_INITIALIZER   # a death from here on is the initializer's doing
        try:
            initializer, initargs = loads(init)
            initializer(*initargs)
        except BaseException as exc:
            init_record = _record(0, exc)
        q[1] = POS_SENDING
    _thread.start_new_thread(worker.control, (ctl_r,))
    fns: dict[int, Callable[[Any], Any]] = {}
    monotonic = time.monotonic
    done = 0
    retired = False
    kept = None   # the last batch's outcomes, if they went in one pickle: see RESEND
    while True:
        if retired and kept is None:
            return   # the parent starts a fresh worker when it needs one
        message = read_message(task_r)
        if message is None:
            return
        bid, key, fn_bytes, timed, items_bytes = loads(message)
        if key < 0:   # RESEND or RELEASE
            if key == RESEND and kept is not None and kept[0] == bid:
                _bid, start, values, records, busy = kept
                worker.send(_encode(bid, STATUS_DONE, start, values, records, busy)[0])
                del values, records
            kept = None
            continue
        kept = None   # a new batch: the parent has the last one's outcomes
        if fn_bytes is not None:   # first, always: the parent mirrors this cache
            q[1] = POS_FUNCTION   # a death from here on is the function's doing
            q[0] = bid
            try:
                fns[key] = loads(fn_bytes)
            except BaseException as exc:
                fns[key] = _unloadable(exc)
            if len(fns) > FN_CACHE:
                del fns[next(iter(fns))]
        if init_record is not None:
            worker.send(_encode(bid, STATUS_INIT_FAILED, 0, [], [init_record], 0.0)[0])
            continue
        fn = fns[key]
        if type(items_bytes) is bytes:   # in one pickle
            q[1] = POS_ITEMS   # a death from here on: the parent sends them one by one
            q[0] = bid
            try:
                items = loads(items_bytes)
            except BaseException:   # SystemExit too: the items' doing
                worker.send(_encode(bid, STATUS_ITEMS_FAILED, 0, [], [], 0.0)[0])
                continue
        else:   # one pickle per item, unpickled as the item starts (its slot position set)
            items = items_bytes
            fn = _loading(fn)
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
                    append(_record(i, exc))
        else:
            for i, x in enumerate(it):
                q[1] = i
                try:
                    append(fn(x))
                except BaseException as exc:  # the task's own failure, whatever its type
                    errors.append(i)
                    append(_record(i, exc))
        busy = monotonic() - t0
        done += len(out)
        q[1] = POS_SENDING   # no item runs while the outcomes are sent: not timed
        with worker.lock:
            worker.current = None
            kept = worker.flush(cur, STATUS_DONE, busy, whole=True)
        del cur, out, errors, append, items, it   # hold nothing while idle (but `kept`)
        retired = max_tasks is not None and done >= max_tasks
