"""What a backend can do, declared on its class: the registry and the API read it.

Every caller that used to ask ``if backend == "process"`` asks the class
instead (``cls.runs_coroutines``, ``"cluster" in cls.options``...), so a
backend is one module: its class and these few lines. ``Backend`` (in
``_base``) inherits them; a backend overrides what differs.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import ClassVar

__all__ = ["Capabilities", "usable_cpus"]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Capabilities:
    """The declarations a backend's class makes (class attributes and classmethods)."""

    #: The ``backend=`` name (set by the class; a registered name may differ).
    name: ClassVar[str]
    #: Runs coroutine functions (awaits ``fn(x)``).
    runs_coroutines: ClassVar[bool] = False
    #: Runs plain functions (calls ``fn(x)``).
    runs_functions: ClassVar[bool] = True
    #: The worker options (see ``conveyor._options.OPTIONS``, kind "worker" and
    #: "pool") its constructor takes as keyword arguments. Any other worker
    #: option given for it is refused with an error naming the backends that take it.
    options: ClassVar[frozenset[str]] = frozenset({"initializer", "initargs"})
    #: Modules it needs that are not conveyor's own dependencies: the test
    #: suite's backend fixture (and ``installed``) leaves it out without them.
    requires: ClassVar[tuple[str, ...]] = ()
    #: What it says about a function it cannot run: ``{where}`` (the call),
    #: ``{fn}`` (the function's name), ``{name}`` (the backend's) and ``{instead}``
    #: (the default backend for such a function) are filled in.
    #: Empty: the message below, from ``runs_coroutines`` / ``runs_functions``.
    cannot_run: ClassVar[str] = ""
    #: ``check(args, kwargs, where)``: checks the arguments of a single call
    #: (``Pool.submit``) before it is queued, e.g. that they can be pickled:
    #: raises ``NotPicklable``. None: nothing to check (nor is the function,
    #: then: ``prepare`` checks it for maps).
    #: (``Callable[..., None]``: a callable class attribute's first parameter
    #: would otherwise be taken for ``self`` by type checkers.)
    check_arguments: ClassVar[Callable[..., None] | None] = None

    @classmethod
    def default_workers(cls) -> int | None:
        """Workers when ``workers=`` is not given (None: the backend counts them)."""
        return min(32, usable_cpus() + 4)   # as ThreadPoolExecutor

    @classmethod
    def check_available(cls) -> None:
        """Raise ImportError, saying how to install it, if a module it needs is missing."""
        for module in cls.requires:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ImportError(f"backend={cls.name!r} needs {module}, which is not "
                                  f"installed here: pip install {module}") from exc

    @classmethod
    def installed(cls) -> bool:
        """Whether the modules it needs are there (found, not imported)."""
        import importlib.util

        return all(importlib.util.find_spec(m) is not None for m in cls.requires)

    @classmethod
    def refusal(cls, fn: str, where: str, *, coroutine: bool, instead: str) -> str:
        """The error for a function it cannot run (``instead``: the default backend for it)."""
        if cls.cannot_run:
            return cls.cannot_run.format(where=where, fn=fn, name=cls.name, instead=instead)
        if coroutine:
            return (f"{where}: {fn} is a coroutine function, which the {cls.name!r} backend "
                    f"cannot run; use backend={instead!r} (the default for coroutine "
                    "functions).")
        return (f"{where}: {fn} is not a coroutine function (async def), so the "
                f"{cls.name!r} backend cannot await it; use backend={instead!r} for "
                "blocking code.")
