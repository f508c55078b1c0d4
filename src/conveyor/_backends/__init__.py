"""The registry of backends: the mechanism behind each ``backend=`` name.

A backend is one module (or package) holding a subclass of ``Backend``
whose class attributes declare what it can do (see ``_capabilities``). The
registry maps names to ``"module:Class"`` and imports a module only when its
backend is used (or when an error must name the backends that take an
option), so ``import conveyor`` imports none of them and never dask.

Built-in backends are listed here; others come from
:func:`register_backend` or from the ``conveyor.backends`` entry point
group of installed distributions, read the first time a name is not found
(or all names are listed, as the command line's ``--backend`` does).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from ._base import Backend
from ._capabilities import usable_cpus

__all__ = ["DEFAULT", "DEFAULT_FOR_COROUTINES", "ENTRY_POINTS", "Backend", "backend_class",
           "builtin", "create", "default_for", "default_workers", "known", "names",
           "register_backend", "taking", "usable_cpus"]

ENTRY_POINTS = "conveyor.backends"

#: Built-in backend name -> "module:Class".
_BUILTIN = {
    "thread": "conveyor._backends.thread:ThreadBackend",
    "asyncio": "conveyor._backends.asyncio:AsyncioBackend",
    "process": "conveyor._backends.process:ProcessBackend",
    "dask": "conveyor._backends.dask:DaskBackend",
}
#: ``backend=None``: plain functions run here, coroutine functions there.
DEFAULT = "thread"
DEFAULT_FOR_COROUTINES = "asyncio"

_lock = threading.Lock()
_targets: dict[str, str | type[Backend]] = dict(_BUILTIN)
_classes: dict[str, type[Backend]] = {}
_entry_points_read = False


def register_backend(name: str, backend: type[Backend] | str) -> None:
    """Make ``backend=name`` run on ``backend``: a ``Backend`` subclass, or its
    ``"module:Class"`` path (imported when first used).

    Raises ``TypeError`` for a name that is not a string or a class that is
    not a ``Backend``, and ``ValueError`` for a name already taken by another
    backend or one that differs from the class's own ``name``. Registering the
    same backend again is harmless.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"conveyor.register_backend: the name must be a string like "
                        f"'ray' (an identifier), got {name!r}")
    given: object = backend   # typed, but called from untyped code too
    if isinstance(given, type) and not issubclass(given, Backend):
        _check_class(name, given)   # says what it is not
    if not isinstance(given, (str, type)) or (isinstance(given, str) and given.count(":") != 1):
        raise TypeError(f"conveyor.register_backend: give a Backend subclass or its "
                        f"'module:Class' path, got {backend!r}")
    with _lock:
        old = _targets.get(name)
        if old is not None and old != backend and _classes.get(name) is not backend:
            raise ValueError(f"conveyor.register_backend: the name {name!r} is taken by "
                             f"{_shown(old)}; choose another name")
        if isinstance(backend, type):
            _classes[name] = _check_class(name, backend)
        _targets[name] = backend


def _shown(target: str | type[Backend]) -> str:
    return target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def _check_class(name: str, cls: object) -> type[Backend]:
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"backend {name!r}: {cls!r} is not a subclass of "
                        "conveyor's Backend (see the guide's 'Writing a backend')")
    own = getattr(cls, "name", None)
    if own != name:
        raise ValueError(f"backend {name!r}: its class {cls.__qualname__} says "
                         f"name = {own!r}; register it under that name, or set "
                         f"name = {name!r} on the class")
    return cls


def _read_entry_points() -> None:
    """Register what installed distributions offer in the ``conveyor.backends`` group."""
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    from importlib.metadata import entry_points  # only now: it costs milliseconds

    for ep in entry_points(group=ENTRY_POINTS):
        with _lock:
            _targets.setdefault(ep.name, ep.value)


def names() -> list[str]:
    """Every backend name: the built-in ones first, then the registered ones."""
    _read_entry_points()
    return list(_targets)


def builtin() -> list[str]:
    """The built-in backend names."""
    return list(_BUILTIN)


def known(name: object) -> bool:
    """Whether ``name`` names a backend (entry points are read if it is not found)."""
    if not isinstance(name, str):
        return False
    if name not in _targets:
        _read_entry_points()
    return name in _targets


def backend_class(name: str) -> type[Backend]:
    """The class of backend ``name``, its module imported now if it was not.

    Raises KeyError for an unknown name (check with :func:`known`).
    """
    cls = _classes.get(name)
    if cls is not None:
        return cls
    if not known(name):
        raise KeyError(name)
    target = _targets[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        cls = _check_class(name, obj)
    else:
        cls = target
    _classes[name] = cls
    return cls


def default_for(coroutine: bool) -> str:
    """The backend a function runs on when ``backend=`` is not given."""
    return DEFAULT_FOR_COROUTINES if coroutine else DEFAULT


def default_workers(name: str) -> int | None:
    """Backend ``name``'s workers when ``workers=`` is not given."""
    return backend_class(name).default_workers()


def taking(option: str, *, coroutine: bool | None = None) -> list[str]:
    """The backends whose class takes worker option ``option`` (every module imported:
    for error messages only). ``coroutine``: only those that can run such a function."""
    out = []
    for name in names():
        try:
            cls = backend_class(name)
        except Exception:
            continue
        if option in cls.options and (coroutine is None or (
                cls.runs_coroutines if coroutine else cls.runs_functions)):
            out.append(name)
    return out


def create(name: str, workers: int | None, *, initializer: Callable[..., object] | None = None,
           initargs: tuple[Any, ...] = (), **options: Any) -> Backend:
    """A backend ``name`` with ``workers`` workers; ``options`` are already checked."""
    cls: Any = backend_class(name)   # a subclass: its constructor takes these
    backend: Backend = cls(workers, initializer=initializer, initargs=initargs, **options)
    return backend
