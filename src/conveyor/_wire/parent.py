"""The parent's end of the wire: pickling what goes to workers, rebuilding what comes back.

Shared by the process and dask backends. A function is pickled once
(:func:`pickle_function`, which names what in it cannot be pickled); a
batch's items in one pickle, or one per item, up to the first one that cannot
be pickled (:func:`pickle_items`: that one fails alone, the scheduler sends
the rest again). What comes back is rebuilt by :func:`outcomes`: a failure
becomes its exception (the worker's traceback as its ``__cause__``), and a
result that cannot be unpickled here fails only its own item.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._backends import _mpshare
from ..errors import NotPicklable, RemoteTraceback
from . import pickles
from .records import Failure, Kind

__all__ = ["check_arguments", "dumps", "dumps_each", "outcomes", "pickle_items", "rebuild"]

class _ByValue(Exception):
    pass


_main_aware: Any = None


def dumps(obj: object) -> bytes:
    """Pickle with the C pickler; cloudpickle for what it cannot do, or should not.

    The C pickler would send an instance of a class defined in ``__main__`` by
    reference, and a worker's ``__main__`` is not the user's: those go to
    cloudpickle, which sends the class by value. Exact ints, strs, lists,
    dicts... never reach ``reducer_override``, so plain data pays nothing.
    Objects of multiprocessing's (``shared``) go to ``_mpshare.reduce``.
    """
    import io

    shared, seen = _mpshare.classes()
    try:
        with io.BytesIO() as f:
            _pickler(f, shared, seen).dump(obj)
            return f.getvalue()
    except Exception:
        return _mpshare.cloudpickle_dumps(obj) if shared else pickles.cloudpickle_dumps(obj)


def _pickler(f: Any, shared: tuple[type, ...], seen: dict[type, bool]) -> Any:
    """A ``_main_aware_pickler`` on ``f`` that knows multiprocessing's classes."""
    pickler = _main_aware_pickler()(f, 5)
    pickler.shared, pickler.seen = shared, seen
    return pickler


def _main_aware_pickler() -> Any:
    global _main_aware
    if _main_aware is None:
        import pickle

        class MainAware(pickle.Pickler):
            shared: tuple[type, ...] = ()
            seen: dict[type, bool] = {}  # noqa: RUF012 - replaced at each use

            def reducer_override(self, obj: Any) -> Any:
                cls = type(obj)
                shared = self.seen.get(cls)
                if shared is None:
                    shared = self.seen[cls] = issubclass(cls, self.shared)
                if shared:
                    rv = _mpshare.reduce(obj, None)
                    if rv is not NotImplemented:
                        return rv
                try:
                    module = getattr(obj, "__module__", None)
                except Exception:
                    module = None
                if module == "__main__":
                    raise _ByValue
                return NotImplemented

        _main_aware = MainAware
    return _main_aware



def dumps_each(items: list[Any]) -> list[bytes]:
    """The items of a job, one pickle per item.

    A worker unpickles items pickled one by one as each starts (see
    ``process.worker``), so one whose unpickling fails, exits, crashes the worker or
    hangs (timed, it is part of its task) fails only itself. Dearer than one
    pickle of all: for timed jobs, and jobs whose one pickle did not unpickle.
    """
    shared, seen = _mpshare.classes()
    out = []
    for blob, exc in pickles.dumps_each(items, lambda f, _protocol: _pickler(f, shared, seen)):
        if exc is not None:
            raise exc   # pickle_items finds which item, and sends the ones before it
        out.append(blob)
    return out


def check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> None:
    """Raise ``NotPicklable`` naming the first argument that cannot be sent."""
    try:
        dumps((args, kwargs))
        return
    except Exception as exc:
        error = exc
    parts = [(f"argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in parts:
        try:
            dumps(value)
        except Exception as exc:
            raise NotPicklable(
                f"{where}: {label} ({value!r:.80}), a {type(value).__name__}, cannot be sent "
                f"to a worker process: {type(exc).__name__}: {exc}",
                type_name=type(value).__name__) from exc
    raise NotPicklable(f"{where}: the arguments cannot be sent to a worker process: "
                       f"{type(error).__name__}: {error}") from error


def pickle_items(items: list[Any], dump: Callable[[list[Any]], Any] = dumps,
                  ) -> tuple[Any, int, BaseException | None]:
    """Pickle a batch's items: (payload, how many, error for the first one that fails).

    When an item cannot be pickled, the payload holds the items before it (or
    is None if it is the first); the scheduler sends the rest again, and that
    item then fails on its own. ``dump`` makes the payload (by default one
    pickle of the list).
    """
    try:
        return dump(items), len(items), None
    except Exception:
        pass
    for i, x in enumerate(items):
        try:
            dumps(x)
        except Exception as exc:
            if i:
                return dump(items[:i]), i, None
            error = NotPicklable(
                f"this item, a {type(x).__name__}, cannot be sent to a worker process: "
                f"{type(exc).__name__}: {exc}", type_name=type(x).__name__)
            error.__cause__ = exc
            return None, 0, error
    return dump(items), len(items), None   # pragma: no cover - it failed as a whole only


def outcomes(data: bytes, start: int, whole: bool, where: str = "the parent process",
             ) -> tuple[list[Any], list[int]] | None:
    """Outcomes of positions ``start...``, exceptions rebuilt; failed positions.

    A result that cannot be unpickled here (its class's module is missing,
    its ``__reduce__`` raises, even ``SystemExit``) fails its own task only:
    None if the outcomes are ``whole`` (see ``pickles.pack_outcomes``) and do
    not unpickle as one, so that the worker sends them again one by one.
    ``where``: this process, as the error for such a result names it.
    """
    got = pickles.unpack_outcomes(data, start, whole)
    if got is None:
        return None
    values, failures, broken = got
    positions = []
    for failure in failures:
        values[failure.pos - start] = rebuild(failure)
        positions.append(failure.pos)
    if broken:
        for i, exc in broken.items():
            error = NotPicklable(f"the result of this task could not be unpickled in {where}: "
                                 f"{type(exc).__name__}: {pickles.safe_str(exc)}")
            error.__cause__ = exc
            values[i] = error
            positions.append(start + i)
        positions.sort()
    return values, positions


def rebuild(failure: Failure) -> BaseException:
    """The exception for a worker's failure (see ``pickles.failure``)."""
    import pickle

    kind, exc_bytes, type_name, message = failure.kind, failure.exc, failure.type_name, \
        failure.message
    tb = failure.tb
    if kind == Kind.ITEM:
        return NotPicklable(f"this item could not be unpickled in the worker process: "
                            f"{message}", type_name=type_name or None)
    if kind == Kind.FUNCTION:
        return NotPicklable(message)
    if kind == Kind.RESULT:
        return NotPicklable(
            f"the task returned a {type_name}, which cannot be pickled to send it back "
            f"from the worker process ({message}); return something picklable, e.g. "
            "plain data", type_name=type_name)
    exc: BaseException | None = None
    if exc_bytes is not None:
        try:
            exc = pickle.loads(exc_bytes)
        except BaseException:   # it loaded in the worker; whatever it does here, it is data
            exc = None
    if not isinstance(exc, BaseException):
        exc = NotPicklable(
            f"the task raised {type_name}: {message} -- that exception cannot be pickled "
            "to send it back from the worker process, so this error stands in for it "
            "(its worker-side traceback is attached)", type_name=type_name)
    # Through the descriptor: `exc.__cause__ = ...` runs the class's __setattr__,
    # which a frozen dataclass exception makes raise.
    _CAUSE.__set__(exc, RemoteTraceback(tb) if isinstance(tb, str)
                   else RemoteTraceback._from_frames(tb))
    return exc


_CAUSE: Any = BaseException.__dict__["__cause__"]

