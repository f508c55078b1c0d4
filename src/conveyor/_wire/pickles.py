"""Pickling on both ends of the wire that a process worker can load on its own.

Outcomes are packed (:func:`pack_outcomes`) so that plain data stays in one
pickle, while a value the receiver cannot unpickle, an exception its pickle
cannot rebuild, or an item the worker cannot rebuild fails only its own item
(:func:`unpack_outcomes`, :func:`tolerant_loads`, :func:`load_item`). A failed
item travels as a :class:`~conveyor._wire.records.Failure` (:func:`failure`).

Loaded in process workers without the conveyor package (see
``conveyor._worker.sibling``): it imports only what starts fast.
"""

from __future__ import annotations

import os

from conveyor._worker import sibling

TYPE_CHECKING = False   # not typing's: importing typing costs a worker milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from conveyor._wire import records
else:   # a process worker loads it without the conveyor package: see sibling
    records = sibling("_wire.records")

try:   # the C pickler directly: importing pickle.py costs a worker milliseconds
    from _pickle import dumps, loads
except ImportError:  # pragma: no cover - other interpreters
    from pickle import dumps, loads

__all__ = ["FunctionError", "ItemError", "Unbuildable", "cloudpickle_dumps", "cloudpickler",
           "dumps_each", "failure", "load_item", "loading", "pack_outcomes", "plain_dumps",
           "safe_str", "skip_unbuildable", "tolerant_loads", "type_name", "unloadable",
           "unpack_outcomes"]

Failure = records.Failure
Kind = records.Kind
Outcomes = records.Outcomes

# conveyor's own frames on a worker, skipped at the top of a task's traceback
_ROOT = os.path.dirname(os.path.dirname(__file__))
_OWN_FILES = frozenset({__file__, os.path.join(_ROOT, "_worker.py"),
                        os.path.join(_ROOT, "_backends", "process", "worker.py")})

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


def safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:  # a broken __str__
        return f"<{type(exc).__name__}: str() failed>"


def type_name(obj: object) -> str:
    return type_name_of(type(obj))


def type_name_of(t: type) -> str:
    module = getattr(t, "__module__", "")
    return t.__qualname__ if module in ("builtins", "__main__", None) \
        else f"{module}.{t.__qualname__}"


class Unbuildable:
    """Stands for an exception that its pickle could not rebuild (see ``tolerant_loads``)."""

    def __init__(self, cls: type, args: tuple[Any, ...], error: BaseException) -> None:
        self.type_name = type_name_of(cls)
        self.args = args
        self.error = error

    def __setstate__(self, state: Any) -> None:
        pass

    def describe(self) -> str:
        return (f"{self.type_name}{self.args!r:.200} cannot be rebuilt from its pickle: "
                f"{type(self.error).__name__}: {safe_str(self.error)}")


class ItemError(TypeError):
    pass


class FunctionError(TypeError):
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


def skip_unbuildable(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` over items from ``tolerant_loads``: one that holds an ``Unbuildable``
    (itself, or inside it: a submitted call's arguments) fails as ``ItemError``."""
    def run(x: Any) -> Any:
        bad = unbuildable_in(x)
        if bad is not None:
            raise ItemError(bad.describe())
        return fn(x)
    return run


def unbuildable_in(x: Any, depth: int = 4) -> Unbuildable | None:
    """The first ``Unbuildable`` in ``x`` or in its containers, ``depth`` levels down."""
    if isinstance(x, Unbuildable):
        return x
    if depth and type(x) in (tuple, list, set, frozenset, dict):
        for y in (x.values() if type(x) is dict else x):
            found = unbuildable_in(y, depth - 1)
            if found is not None:
                return found
    return None



def failure(pos: int, exc: BaseException) -> records.Failure:
    """The :class:`~conveyor._wire.records.Failure` of the item at ``pos``.

    Never raises, whatever ``exc`` does when it is formatted or pickled. The
    worker makes the record as the item fails, its position still in the
    slot: an exception whose unpickling (tried here, so that the parent is
    not the one to run it) kills the worker fails its own item only.
    """
    if isinstance(exc, ItemError):
        return Failure(pos, Kind.ITEM, None, "", safe_str(exc), "")
    if isinstance(exc, FunctionError):
        return Failure(pos, Kind.FUNCTION, None, "", safe_str(exc), "")
    frames = exc.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename in _OWN_FILES:
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
    return Failure(pos, Kind.RAISED, exc_bytes, type_name(exc), safe_str(exc), tb)


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
                # the records (and their classes) are plain data too; `is`, not
                # `in`: an object's __eq__ is the user's code
                cls = type(obj)
                if cls is Failure or cls is Outcomes or obj is Failure or obj is Outcomes:
                    return NotImplemented
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


def pack_outcomes(values: list[Any], failures: list[records.Failure], start: int,
                  whole: bool = False) -> tuple[bytes, bool]:
    """``Outcomes(values, packed, failures)`` pickled, for :func:`unpack_outcomes`;
    and ``whole``.

    ``values`` are the outcomes of positions ``start...`` (None where an item
    failed); ``failures`` describe the failed ones, by batch position. Plain
    data (with the failures) is one pickle. Otherwise, with ``whole``, one
    pickle of all (``packed`` None, ``whole`` True, nothing changed): the fast
    way, which the receiver may fail to unpickle as a whole. Else, or if that
    cannot be pickled, plain values stay in ``values`` and any other one (not
    at a failed position) is pickled on its own into ``packed`` (position -
    ``start`` -> bytes), so that one the receiver cannot unpickle fails its own
    item, not the batch; a value that cannot be pickled becomes its task's
    failure; that result always unpickles, and ``values`` and ``failures`` are
    changed in place.
    """
    data = plain_dumps(Outcomes(values, None, failures))
    if data is not None:
        return data, False
    if whole:
        try:
            return dumps(Outcomes(values, None, failures), 5), True
        except BaseException:   # e.g. a lock, a class of __main__: one by one says which
            pass
    failed = {f.pos - start for f in failures}
    odd = [i for i, value in enumerate(values) if type(value) not in _ATOMS and i not in failed]
    packed: dict[int, bytes] = {}
    bad = False
    for i, (blob, exc) in zip(odd, dumps_each([values[i] for i in odd]), strict=True):
        if exc is None:
            packed[i] = blob
        else:
            failures.append(Failure(start + i, Kind.RESULT, None, type_name(values[i]),
                                    f"{type(exc).__name__}: {safe_str(exc)}", ""))
            bad = True
        values[i] = None
    if bad:
        failures.sort(key=_position)
    return dumps(Outcomes(values, packed, failures), 5), False


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


def _position(failure: records.Failure) -> int:
    return failure.pos


def unpack_outcomes(data: bytes, start: int, whole: bool = False,
                    ) -> tuple[list[Any], list[records.Failure],
                               dict[int, BaseException]] | None:
    """:func:`pack_outcomes`'s outcomes: ``(values, failures, broken)``.

    A value that cannot be unpickled here is None in ``values``: an
    exception that cannot be rebuilt gets a failure (``Kind.RESULT``); any
    other is in ``broken`` (position - ``start`` -> what unpickling raised,
    whatever it raised: ``SystemExit`` from a ``__reduce__`` is data, not a
    request to exit). Never raises for what one value does: outcomes packed
    ``whole`` that do not unpickle as one give None (ask for them one by one).
    """
    if whole:
        try:
            values, packed, failures = loads(data)
        except BaseException:   # SystemExit too: the data's doing, not a request to exit
            return None
    else:
        values, packed, failures = loads(data)   # plain values, bytes and records: it loads
    if not packed:
        return values, failures, {}
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
            failures.append(Failure(start + i, Kind.RESULT, None, value.type_name,
                                    value.describe(), ""))
        else:
            broken[i] = error
    failures.sort(key=_position)
    return values, failures, broken


def load_item(blob: bytes) -> Any:
    """One item pickled on its own; ``ItemError`` (its item fails) if it cannot be."""
    try:
        return loads(blob)
    except BaseException as exc:   # SystemExit too: the item's fault, not a request to exit
        error = exc
    try:
        value = tolerant_loads(blob)
    except BaseException:
        value = None
    if isinstance(value, Unbuildable):
        raise ItemError(value.describe()) from None
    raise ItemError(f"{type(error).__name__}: {safe_str(error)}") from None


def loading(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` over items pickled one by one (unpickled as each one starts)."""
    def run(blob: bytes) -> Any:
        return fn(load_item(blob))
    return run


def unloadable(exc: BaseException, where: str = "in the worker process",
               hint: str = "is its module importable there, with the same sys.path and "
                           "working directory?") -> Callable[[Any], Any]:
    """A stand-in for a function that could not be unpickled: each call says why
    (a ``Kind.FUNCTION`` record: ``NotPicklable`` where the parent rebuilds it)."""
    message = (f"the function could not be unpickled {where}: "
               f"{type(exc).__name__}: {safe_str(exc)} ({hint})")

    def fail(_item: Any) -> Any:
        raise FunctionError(message)
    return fail

