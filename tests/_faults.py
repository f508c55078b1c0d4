"""Objects that fail as they cross a process boundary (imported in workers: keep it light).

Each *what* names one fault; :func:`make` builds an object with that fault,
:func:`make_error` an exception with it (to be raised by a task):

* ``raise_at_pickle``: pickling it raises :class:`FaultError`;
* ``raise_at_unpickle``: unpickling it raises :class:`FaultError`;
* ``exit_at_unpickle``: unpickling it raises ``SystemExit(7)``;
* ``os_exit_at_unpickle``: unpickling it calls ``os._exit(3)`` (the process ends at once);
* ``segfault_at_unpickle``: unpickling it reads address 0 (a real SIGSEGV);
* ``frozen``: a ``@dataclass(frozen=True)`` exception (unpickling it fails in
  ``__setstate__``, and so does setting its ``__traceback__``);
* ``unrebuildable``: an exception whose ``__init__`` refuses its own ``args``.

The task functions here are module-level, so they are pickled by reference.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

EXIT_CODE = 3          # os._exit at unpickling
SYSTEM_EXIT_CODE = 7   # SystemExit at unpickling

WHATS = ("raise_at_pickle", "raise_at_unpickle", "exit_at_unpickle", "os_exit_at_unpickle",
         "segfault_at_unpickle", "frozen", "unrebuildable")


class FaultError(RuntimeError):
    """What the raising faults raise (at pickling or at unpickling)."""


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    code: int


class UnrebuildableError(Exception):
    """Pickles (its ``args`` only), but ``UnrebuildableError(*args)`` fails."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} and {b}")


def _raise_fault() -> None:
    raise FaultError("injected fault at unpickling")


def _system_exit() -> None:
    raise SystemExit(SYSTEM_EXIT_CODE)


def _os_exit() -> None:
    os._exit(EXIT_CODE)


def _segfault() -> None:
    import ctypes

    ctypes.string_at(0)


_AT_UNPICKLE = {"raise_at_unpickle": _raise_fault, "exit_at_unpickle": _system_exit,
                "os_exit_at_unpickle": _os_exit, "segfault_at_unpickle": _segfault}


def _reduce(what: str) -> tuple[Any, ...]:
    if what == "raise_at_pickle":
        raise FaultError("injected fault at pickling")
    return (_AT_UNPICKLE[what], ())


class Fault:
    """A plain object with the fault ``what`` (see the module docstring)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce(self.what)


class FaultyError(Exception):
    """An exception with the fault ``what``."""

    def __init__(self, what: str) -> None:
        super().__init__(f"faulty exception ({what})")
        self.what = what

    def __reduce__(self) -> tuple[Any, ...]:
        return _reduce(self.what)


def make(what: str) -> Any:
    """An object with the fault ``what``."""
    if what == "frozen":
        return FrozenError(5)
    if what == "unrebuildable":
        return UnrebuildableError("a", "b")
    return Fault(what)


def make_error(what: str) -> BaseException:
    """An exception with the fault ``what``."""
    error = make(what)
    return error if isinstance(error, BaseException) else FaultyError(what)


# -- task functions -----------------------------------------------------------------

def double(x: int) -> int:
    return x * 2


def carry(fault: object, x: int) -> int:
    """``partial(carry, fault)``: a function that holds a faulty object."""
    return x * 2


def produce(maker: Callable[[], Any], bad: int, x: int) -> Any:
    """Return ``maker()`` (a faulty object) for item ``bad``, else ``2 * x``."""
    return maker() if x == bad else x * 2


def throw(maker: Callable[[], BaseException], bad: int, x: int) -> int:
    """Raise ``maker()`` (a faulty exception) for item ``bad``, else return ``2 * x``."""
    if x == bad:
        raise maker()
    return x * 2


def init_with(fault: object) -> None:
    """An initializer whose argument is the faulty object."""
