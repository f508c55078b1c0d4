"""Telling users about their slips: unread results, a loop blocked, a misspelt option.

* **Where.** A warning must point at the user's line, not at conveyor's, and
  the unread-results warning is given long after the call (when the results
  are dropped): :func:`caller_site` notes, when the object is made, the first
  frame outside this package (a few frame hops, no frame kept alive), and
  :func:`warn_at` warns there, with that module's registry (so the ``default``
  action shows a warning once per line, as ``warnings.warn`` does).
* **Inside a coroutine or at a notebook's top level?** Both have a running
  event loop in this thread, and in a Jupyter kernel (ipykernel 6 and 7) a
  current task too, so neither tells them apart. The code that calls does:
  :func:`blocks_a_loop` walks up from it, and the first frame that is either a
  coroutine (or async generator) or a module's top-level code decides. A cell
  is top-level code (``<module>``), also with a top-level ``await``; the
  kernel's own coroutines above it are never reached.
* **Options.** :func:`unknown_options` is the error for an option a call does
  not take: it names the call, the option the user likely meant (other
  libraries' names too, e.g. ``chunksize``) and the valid ones.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import os
import sys
import warnings
from collections.abc import Collection, Sequence
from typing import Any

from .errors import BlockingCallWarning, UnreadResultsWarning

__all__ = ["Site", "Usage", "blocks_a_loop", "caller_site", "unknown_options", "warn_at",
           "warn_if_blocking", "warn_unread"]

_PACKAGE = os.path.dirname(__file__) + os.sep   # as the package's co_filename values start
_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR

#: Options of other libraries that users pass by habit: conveyor's name for
#: each, and what to add about it.
_HABITS = {
    "chunksize": ("batch", " batch='auto' (the default) sizes batches by itself; batch=N "
                           "sends N items to a worker at a time."),
    "max_workers": ("workers", ""),
    "n_jobs": ("workers", ""),
    "processes": ("workers", ""),
}


class Site:
    """A line of the user's code: where a warning about it points."""

    __slots__ = ("filename", "lineno", "module_globals")

    def __init__(self, filename: str, lineno: int, module_globals: dict[str, Any]) -> None:
        self.filename = filename
        self.lineno = lineno
        self.module_globals = module_globals


def _user_frame() -> Any:
    """The innermost frame outside conveyor (the outermost one if all are inside)."""
    f = sys._getframe(2)
    while f.f_back is not None and f.f_code.co_filename.startswith(_PACKAGE):
        f = f.f_back
    return f


def caller_site() -> Site:
    """The user's line that (through conveyor's own frames) called the caller."""
    f = _user_frame()
    return Site(f.f_code.co_filename, f.f_lineno, f.f_globals)


def warn_at(site: Site, message: str, category: type[Warning]) -> None:
    """``warnings.warn`` as if called at ``site``."""
    g = site.module_globals
    # As warnings.warn: the module's name, "<string>" for code run without one
    # (with module=None and a registry, warn_explicit shows nothing at all).
    # Not module_globals=: with them a `python -c` site fails (its loader has
    # no source to give), and warnings.warn passes none either.
    warnings.warn_explicit(message, category, site.filename, site.lineno,
                           module=g.get("__name__") or "<string>",
                           registry=g.setdefault("__warningregistry__", {}))


def blocks_a_loop() -> bool:
    """Whether waiting here would block a running event loop from inside a coroutine.

    True when this thread runs an event loop and the user's code calling us
    runs in a coroutine (directly, or in sync functions a coroutine called);
    False at a module's or a notebook cell's top level, and in a loop's plain
    callbacks (not seen: no coroutine frame is above them).
    """
    return _blocking_frame() is not None


def _blocking_frame() -> Any:
    """The user's frame if it blocks a loop from inside a coroutine, else None."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    user = f = _user_frame()
    while f is not None:
        code = f.f_code
        if code.co_name == "<module>":   # first: a cell with a top-level await is a coroutine
            return None
        if code.co_flags & _ASYNC_CODE:
            return user
        f = f.f_back
    return None


def warn_if_blocking(where: str, instead: str) -> None:
    """Warn (``BlockingCallWarning``, at the user's line) if waiting here blocks a loop."""
    f = _blocking_frame()
    if f is not None:
        warn_at(Site(f.f_code.co_filename, f.f_lineno, f.f_globals),
                f"{where}: waiting for results inside a coroutine blocks its event loop "
                f"(every other task stands still meanwhile). {instead}", BlockingCallWarning)


class Usage:
    """How the user has used a stream of results, for the warnings about it.

    ``read``: iterated or waited for. ``quiet``: stopped or handed over on
    purpose (``close()``, ``with``, an eager executor map, a pipeline's own
    stage, a misuse already reported): no unread warning. ``internal``: a
    pipeline's stage, consumed by conveyor itself (no blocking warning either).
    ``ended``: a pipeline's results ran out or it was closed.
    """

    __slots__ = ("ended", "internal", "quiet", "read", "site", "where")

    def __init__(self, where: str) -> None:
        self.where = where
        self.site = caller_site()
        self.read = False
        self.quiet = False
        self.internal = False
        self.ended = False

    @property
    def unread(self) -> bool:
        return not (self.read or self.quiet)


def warn_unread(usage: Usage, what: str, fix: str, *, ran: int | None, failed: int = 0,
                total: int | None = None, finished: bool = False) -> None:
    """Warn (``UnreadResultsWarning``, where it was made) that ``what`` was dropped unread.

    ``ran``/``failed``: items finished/failed so far, of ``total`` if known
    (``ran=None``: it never started); ``finished``: the run had ended on its
    own (else dropping it stops it).
    """
    if ran is None:
        happened = "was dropped without ever being run"
    else:
        count = f"{ran:,} of {total:,}" if total is not None else f"{ran:,}"
        count += " item" if (total if total is not None else ran) == 1 else " items"
        if failed:
            count += f" ({failed:,} failed)"
        if finished:
            happened = (f"was dropped without being read; its run had ended (it ran "
                        f"{count}), but nobody saw its results or errors")
        else:
            happened = f"was dropped without being read, which stopped its run: it ran {count}"
    warn_at(usage.site, f"{usage.where}: {what} {happened}. {fix}", UnreadResultsWarning)


def unknown_options(where: str, names: Collection[str], valid: Sequence[str],
                    hints: dict[str, str] | None = None) -> TypeError:
    """The error for options ``names`` that ``where`` does not take.

    ``hints``: what to say about an option (given, or meant) that belongs
    elsewhere, e.g. ``Pool.map``'s ``workers``.
    """
    hints = hints or {}
    parts = []
    for name in sorted(names):
        hint = hints.get(name)
        if hint is None:
            meant, more = _HABITS.get(name, ("", ""))
            if not meant:
                close = difflib.get_close_matches(name, valid, n=1)
                meant = close[0] if close else ""
            hint = f"did you mean {meant}=?{more}" if meant in valid else hints.get(meant)
        part = f"unexpected option {name}=" + (f"; {hint}" if hint else "")
        parts.append(part if part.endswith((".", "?")) else part + ".")
    return TypeError(f"{where}: {' '.join(parts)} {where} takes: {', '.join(valid)}.")
