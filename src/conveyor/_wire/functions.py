"""Pickling a function (or an initializer) once, for every worker that runs it.

Shared by the process and dask backends, and by ``_mpshare`` for a pool's
initializer: a function that cannot be pickled is caught before any work,
with an error naming what in it cannot be.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable

from ..errors import NotPicklable
from . import pickles

__all__ = ["fresh", "pickle_function"]


def pickle_function(fn: object, what: str,
                    dumps: Callable[[object], bytes] = pickles.cloudpickle_dumps) -> bytes:
    """Pickle ``fn`` with ``dumps``; a ``NotPicklable`` that names the culprit if it can't be."""
    try:
        return dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise NotPicklable(
            f"{what} {name} cannot be sent to worker processes: {type(exc).__name__}: {exc}"
            f"{_culprit(fn)}. Create what it needs inside the function (or in the pool's "
            "initializer, kept in conveyor.worker_state()), or pass picklable arguments.",
            type_name=type(fn).__name__) from exc


def _culprit(fn: object) -> str:
    """Which object that ``fn`` refers to cannot be pickled (best effort)."""
    parts: list[tuple[str, object]] = []
    if isinstance(fn, functools.partial):
        parts += [("the partial's function", fn.func)]
        parts += [(f"argument {i} of the partial", a) for i, a in enumerate(fn.args)]
        parts += [(f"keyword {k!r} of the partial", v) for k, v in fn.keywords.items()]
    elif isinstance(fn, types.MethodType):
        parts += [("the object the method is bound to", fn.__self__)]
    func = fn.__func__ if isinstance(fn, types.MethodType) else fn
    if isinstance(func, types.FunctionType):
        code = func.__code__
        for name, cell in zip(code.co_freevars, func.__closure__ or (), strict=False):
            with contextlib.suppress(ValueError):   # an empty cell
                parts.append((f"the variable {name!r} it closes over", cell.cell_contents))
        for name in _names(code):
            if name in func.__globals__:
                parts.append((f"the global {name!r}", func.__globals__[name]))
        for i, value in enumerate(func.__defaults__ or ()):
            parts.append((f"default argument {i}", value))
    elif not isinstance(fn, (functools.partial, types.MethodType)):
        for name, value in getattr(fn, "__dict__", {}).items():
            parts.append((f"its attribute {name!r}", value))
    for label, obj in parts:
        try:
            pickles.cloudpickle_dumps(obj)
        except Exception as exc:
            return (f" (it refers to {label}, a {type(obj).__name__}, which cannot be "
                    f"pickled: {exc})")
    return ""


def _names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _names(const)
    return names


def fresh(exc: NotPicklable) -> NotPicklable:
    """A new error like ``exc`` (one per item that fails with it)."""
    e = NotPicklable(str(exc), type_name=exc.type_name)
    e.__cause__ = exc.__cause__
    return e
