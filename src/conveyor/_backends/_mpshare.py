"""multiprocessing's shared objects on process workers: queues, locks, shared memory, proxies.

conveyor's workers are fresh interpreters started by ``subprocess``, not
children of multiprocessing. multiprocessing pickles a ``Queue``, ``Lock``,
``Event``, ``Value``... only "through inheritance": while it starts a process
(``context.get_spawning_popen()`` is set), because their pipes and shared
memory travel as file descriptors handed to the child as it starts, and their
semaphores are opened by name. So, as ``ProcessPoolExecutor`` does:

* **initargs** are pickled once, at ``Pool(...)``, under a spawning context of
  conveyor's (``_Spawning``): each descriptor they hold is duplicated and
  passed to every worker (``pass_fds``) for the pool's life, and the objects
  are kept alive, so a worker started later (a replacement) still opens the
  same semaphores and memory;
* **call arguments, items and functions** are pickled at any time, outside any
  start: such objects are refused (``NotShareable``), naming what works;
* **Manager proxies** go anywhere: each carries its manager's authkey (as
  spawning gives it), and rebuilding one gives the worker the parent's
  authkey (see ``_worker.rebuild_proxy``).

A semaphore made in the ``"fork"`` context (multiprocessing's default on
Linux up to Python 3.13) is unlinked as it is created: only forked children
can reach it, so it is refused everywhere, naming ``get_context("spawn")``.
(Python 3.10 would pickle it and crash the worker that uses it.)

Nothing here imports multiprocessing: the classes are looked up among the
modules already loaded, so a parent that made no such object pays a few
dictionary look-ups per pickle, and a worker nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .. import _worker
from .._wire import pickles
from .._wire.functions import pickle_function
from ..errors import NotPicklable

__all__ = ["NotShareable", "Shared", "classes", "cloudpickle_dumps", "pickle_initargs",
           "reduce", "shared_types"]

WHAT = "the initializer (with its initargs)"
ALTERNATIVES = ("pass it in the Pool's initargs (the initializer can keep it in "
                "conveyor.worker_state()), or use a multiprocessing.Manager()'s (Queue(), "
                "Lock(), Event(), Value(), dict(), list()...), whose proxies can be sent "
                "anywhere")


class NotShareable(TypeError):
    """An object of multiprocessing's that cannot reach a worker this way."""


class _Spawning:
    """What multiprocessing sees as the process being started while initargs are pickled."""

    DupFd = _worker.PassedFd

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        new = os.dup(fd)   # ours: the user may close theirs; every worker gets this one
        self.fds.append(new)
        return new


class Shared:
    """What a pool's workers share with it: descriptors to pass, objects kept alive.

    The objects are kept because the parent's copy owns the semaphores'
    names and the managers' referents: freed, a worker started later could
    not open them.
    """

    def __init__(self, fds: list[int], keep: object) -> None:
        self.fds = tuple(fds)
        self._keep: object = keep
        self.close = weakref.finalize(self, _close_all, self.fds)


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


_cache: tuple[tuple[int, int], tuple[type, ...], dict[type, bool]] = ((-1, -1), (), {})


def shared_types() -> tuple[type, ...]:
    """The classes that need care here, among multiprocessing's modules loaded."""
    return classes()[0]


def classes() -> tuple[tuple[type, ...], dict[type, bool]]:
    """``shared_types()``, and a memo of which classes are (sub)classes of those.

    Kept while no module is loaded and no reducer registered (a ``RawValue``
    registers its ctypes type): this runs at every pickle of a batch, and the
    memo at every object that is not plain data (a dict look-up costs less
    than ``isinstance`` with a tuple of classes).
    """
    global _cache
    modules = sys.modules
    reduction = modules.get("multiprocessing.reduction")
    key = (len(modules), len(reduction.ForkingPickler._extra_reducers) if reduction else 0)
    if _cache[0] == key:
        return _cache[1], _cache[2]
    found: list[type] = []
    managers = modules.get("multiprocessing.managers")
    if managers is not None:
        found.append(managers.BaseProxy)
    synchronize = modules.get("multiprocessing.synchronize")
    if synchronize is not None:
        found += [synchronize.SemLock, synchronize.Condition, synchronize.Event,
                  synchronize.Barrier]
    queues = modules.get("multiprocessing.queues")
    if queues is not None:
        found += [queues.Queue, queues.SimpleQueue]
    sharedctypes = modules.get("multiprocessing.sharedctypes")
    if sharedctypes is not None:
        found.append(sharedctypes.SynchronizedBase)
    found += _fd_reducers()
    _cache = (key, tuple(found), {})
    return _cache[1], _cache[2]


def _fd_reducers() -> dict[type, Callable[[Any], Any]]:
    """multiprocessing's reducers of objects that hold a descriptor or shared memory.

    ``ForkingPickler`` alone knows them (``Connection``, ``heap.Arena``, the
    ctypes of ``RawValue``/``RawArray``); a plain pickler would copy a
    ``Connection``'s descriptor *number*. Those that ``reduction`` registers
    itself (methods, partials, sockets) are left to the pickler.
    """
    reduction = sys.modules.get("multiprocessing.reduction")
    if reduction is None:
        return {}
    return {t: r for t, r in reduction.ForkingPickler._extra_reducers.items()
            if getattr(r, "__module__", "") != "multiprocessing.reduction"}


def reduce(obj: Any, spawning: _Spawning | None) -> Any:
    """``obj``'s reduction for a worker, or ``NotImplemented`` for the pickler's own.

    ``spawning`` is set while initargs are pickled. Raises ``NotShareable``
    for what cannot reach a worker.
    """
    managers = sys.modules.get("multiprocessing.managers")
    if managers is not None and isinstance(obj, managers.BaseProxy):
        return _reduce_proxy(obj)
    reducer = _fd_reducers().get(type(obj))
    sharedctypes = sys.modules.get("multiprocessing.sharedctypes")
    if sharedctypes is not None and reducer is sharedctypes.reduce_ctype and \
            not hasattr(obj, "_wrapper"):
        return NotImplemented   # a plain ctypes object, not RawValue's: a copy is right
    name = type(obj).__name__
    if spawning is None:
        raise NotShareable(
            f"a multiprocessing {name} cannot be sent with a task: multiprocessing shares "
            f"it only with a process it starts, and so does conveyor. To share it, "
            f"{ALTERNATIVES}")
    synchronize = sys.modules.get("multiprocessing.synchronize")
    if synchronize is not None and isinstance(obj, synchronize.SemLock) and \
            sys.platform != "win32" and obj._semlock.name is None:
        raise NotShareable(
            f"it holds a multiprocessing {name} made in the 'fork' context (multiprocessing's "
            "default on Linux before Python 3.14), whose semaphore is unlinked as it is "
            "created: only forked children can use it, and conveyor's workers are fresh "
            "interpreters. Make it from a spawn or forkserver context: ctx = "
            "multiprocessing.get_context('spawn'); ctx.Queue(), ctx.Lock(), ctx.Value(...), "
            "or use a multiprocessing.Manager()'s")
    if reducer is not None:
        return reducer(obj)
    return NotImplemented   # its own __reduce__, now that spawning is set


def _reduce_proxy(proxy: Any) -> Any:
    from multiprocessing import process

    rebuild, (kind, token, serializer, kwds) = proxy.__reduce__()
    kwds = dict(kwds, authkey=bytes(proxy._authkey))
    parent_key = bytes(process.current_process().authkey)
    return (_worker.rebuild_proxy, (parent_key, rebuild, (kind, token, serializer, kwds)))


_sharing: Any = None


def cloudpickle_dumps(obj: object, spawning: _Spawning | None = None) -> bytes:
    """``pickles.cloudpickle_dumps``, with multiprocessing's objects seen to (``reduce``)."""
    global _sharing
    if _sharing is None:
        class Sharing(pickles.cloudpickler()):  # type: ignore[misc]
            shared: tuple[type, ...] = ()
            spawning: _Spawning | None = None

            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, self.shared):
                    rv = reduce(obj, self.spawning)
                    if rv is not NotImplemented:
                        return rv
                return super().reducer_override(obj)

        _sharing = Sharing
    with io.BytesIO() as f:
        pickler = _sharing(f, protocol=5)
        pickler.shared = shared_types()
        pickler.spawning = spawning
        pickler.dump(obj)
        return f.getvalue()


@contextlib.contextmanager
def _spawning() -> Iterator[_Spawning]:
    from multiprocessing import context

    spawning = _Spawning()
    previous = context.get_spawning_popen()
    context.set_spawning_popen(spawning)  # type: ignore[arg-type] # its duck type
    try:
        yield spawning
    finally:
        context.set_spawning_popen(previous)


def pickle_initargs(initializer: Callable[..., object], initargs: tuple[Any, ...],
                    ) -> tuple[bytes, Shared | None]:
    """Pickle ``(initializer, initargs)`` for every worker a pool will start.

    Raises ``NotPicklable`` (at ``Pool(...)``) naming the argument that
    cannot be sent, and for an object of multiprocessing's, what to do.
    """
    if not shared_types():   # no multiprocessing loaded: nothing of its can be in there
        return pickle_function((initializer, initargs), WHAT), None
    with _spawning() as spawning:
        try:
            data = pickle_function((initializer, initargs), WHAT,
                                   lambda obj: cloudpickle_dumps(obj, spawning))
        except NotPicklable as exc:
            _close_all(tuple(spawning.fds))
            if not isinstance(exc.__cause__, NotShareable):
                raise
            raise NotPicklable(f"conveyor.Pool: {_which(initargs, exc.__cause__)}",
                               type_name=exc.type_name) from exc.__cause__
    return data, Shared(spawning.fds, initargs)


def _which(initargs: tuple[Any, ...], error: NotShareable) -> str:
    """Which initarg ``error`` comes from, and the error."""
    for i, arg in enumerate(initargs):
        with _spawning() as probe:
            try:
                cloudpickle_dumps(arg, probe)
            except NotShareable:
                return f"initargs[{i}], a {type(arg).__name__}, cannot be sent to the " \
                       f"worker processes: {error}"
            except Exception:
                pass
            finally:
                _close_all(tuple(probe.fds))
    return f"{WHAT} cannot be sent to the worker processes: {error}"
