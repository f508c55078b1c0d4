"""What every worker shares: ``worker_state``, the calls the backends wrap, ``sibling``.

Thread and asyncio workers use :func:`set_thread_state`; a process worker
(``_backends.process.worker``) loads *this file* as the module
``_conveyor_worker`` (also registered as ``conveyor._worker``) without
importing the ``conveyor`` package, so it imports only what starts fast.
The classes here (``Apply``, ``Star``, ``PassedFd``, ``rebuild_proxy``) are
pickled as ``_conveyor_worker.<name>``, which a worker resolves without the
package, and :func:`sibling` loads the other modules a worker needs
(``_wire``, ``_logs``, ``_tracebacks``) the same way.
"""

from __future__ import annotations

import contextvars
import os
import sys

TYPE_CHECKING = False   # not typing's: importing typing costs a worker milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["ALIAS", "Apply", "PassedFd", "Star", "not_arguments", "rebuild_proxy",
           "set_process_state", "set_thread_state", "sibling", "worker_state"]

#: This module's top-level name too. A class defined here is pickled as
#: ``_conveyor_worker.<name>``, which a worker resolves without importing the
#: conveyor package (the name ``conveyor._worker`` would import it).
ALIAS = "_conveyor_worker"
sys.modules.setdefault(ALIAS, sys.modules[__name__])

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


def set_process_state() -> None:
    """Give this process worker its state dict (one for the whole process)."""
    global _process_state
    _process_state = {}


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
    """The module ``conveyor.<name>`` (one that imports only what starts fast;
    ``name`` may be dotted: ``"_wire.records"``).

    In a process worker, loaded from its file below this file's directory
    without importing the conveyor package, nor the packages on the way
    (see the module docstring); elsewhere, imported.
    """
    full = f"conveyor.{name}"
    module = sys.modules.get(full)
    if module is not None:
        return module
    if __name__ != ALIAS:
        import importlib

        return importlib.import_module(full)
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location(
        full, os.path.join(os.path.dirname(__file__), *name.split(".")) + ".py")
    assert spec is not None
    assert spec.loader is not None
    module = module_from_spec(spec)
    sys.modules[full] = module
    spec.loader.exec_module(module)
    return module

