"""Remote tracebacks: frames taken where a task failed, source lines found where it is read.

A worker cannot show the source of a function defined in a notebook cell or
with ``python -c``: that source exists only in the parent, in its
``linecache`` (IPython registers each cell there; Python 3.13 registers the
``-c`` command). So a worker does not send a formatted traceback: it sends
the frames (file, line number, function, and the columns of the failing
expression) and the exception's own lines (type, message, notes), and the
parent formats them when the traceback is first read (``RemoteTraceback.tb``),
looking each line up in its own ``linecache``. A line the parent does not have
(a module installed on a dask worker only) is the one the worker found, sent
along for files that exist on disk there; for pseudo-files (``<string>``,
``<stdin>``...) the worker's lines are never used: a worker's ``<string>`` is
its own bootstrap command, not the user's.

Everything sent is plain data (tuples, strings, ints), the same on every
Python version: a dask worker may run another one than its client.

Loaded in process workers without the conveyor package (see
``_worker.sibling``): it imports only ``sys`` at module level.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False   # not typing's: a worker loads this module (see _worker)
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any

__all__ = ["extract", "format_remote"]

#: What ``traceback`` prints between two chained exceptions.
CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
HEADER = "Traceback (most recent call last):\n"

#: One exception of a chain: ``(separator before it or None, frames or None,
#: its closing lines)``. Frames are ``(filename, lineno, name, end_lineno,
#: colno, end_colno, worker's line or None)``; None for an exception group,
#: whose closing lines are then its whole traceback, formatted in the worker.
Link = tuple["str | None", "list[tuple[Any, ...]] | None", "list[str]"]


def extract(exc: BaseException, tb: TracebackType | None) -> list[Link]:
    """The chain ending in ``exc`` (raised through ``tb``), oldest first, as plain data.

    Raises whatever ``exc`` does when its message or notes are read (the
    caller has a fallback).
    """
    import traceback

    top = traceback.TracebackException(type(exc), exc, tb, lookup_lines=False)
    chain: list[tuple[str | None, Any]] = []
    te: Any = top
    while te is not None:   # as TracebackException.format walks it
        if te.__cause__ is not None:
            chain.append((CAUSE, te))
            te = te.__cause__
        elif te.__context__ is not None and not te.__suppress_context__:
            chain.append((CONTEXT, te))
            te = te.__context__
        else:
            chain.append((None, te))
            te = None
    links: list[Link] = []
    for separator, te in reversed(chain):   # a separator goes before its exception
        if getattr(te, "exceptions", None) is not None:   # a group: its boxes, as printed here
            links.append((separator, None, list(te.format(chain=False))))
        else:
            links.append((separator, [_frame(f) for f in te.stack],
                          list(te.format_exception_only())))
    return links


def _frame(f: Any) -> tuple[Any, ...]:
    import linecache

    name = f.filename
    line = None
    if not (name.startswith("<") and name.endswith(">")):
        line = linecache.getline(name, f.lineno) or None
    return (name, f.lineno, f.name, getattr(f, "end_lineno", None), getattr(f, "colno", None),
            getattr(f, "end_colno", None), line)


def format_remote(links: list[Link]) -> str:
    """The text ``traceback.format_exception`` would give, with this process's source lines."""
    import traceback

    out: list[str] = []
    for separator, frames, closing in links:
        if separator is not None:
            out.append(separator)
        if frames:
            out.append(HEADER)
            out.extend(traceback.StackSummary.from_list(
                [_summary(traceback, *f) for f in frames]).format())
        out.extend(closing)
    return "".join(out)


def _summary(traceback: Any, filename: str, lineno: int | None, name: str,
             end_lineno: int | None, colno: int | None, end_colno: int | None,
             line: str | None) -> Any:
    import linecache

    if filename == "<string>":
        _register_command()
    mine = lineno is not None and bool(linecache.getline(filename, lineno))
    positions: dict[str, Any] = {}
    if sys.version_info >= (3, 11) and mine:   # carets under the failing expression
        positions = {"end_lineno": end_lineno, "colno": colno, "end_colno": end_colno}
    # Else the worker's line (or none): the columns could point past a line
    # that is not the whole statement, so no carets.
    return traceback.FrameSummary(filename, lineno, name, lookup_line=False,
                                  line=None if mine else line, **positions)


def _register_command() -> None:
    """Give ``linecache`` the ``-c`` command this process runs, as Python 3.13 does itself.

    Before 3.13 a ``python -c`` program's source is in no cache, and functions
    it defines (sent to workers by value) have the file name ``<string>``.
    Python 3.13 shares the ambiguity this has: code compiled by ``exec()``
    of a string is ``<string>`` too.
    """
    import linecache

    if "<string>" in linecache.cache:
        return
    source = _command(getattr(sys, "orig_argv", []))
    if source is not None:
        linecache.cache["<string>"] = (len(source), None,
                                       [s + "\n" for s in source.splitlines()], "<string>")


def _command(argv: list[str]) -> str | None:
    """The ``-c`` command in an interpreter's command line, if it has one."""
    args = iter(argv[1:])
    for arg in args:
        if arg[:1] != "-" or arg == "-" or arg[:2] == "--":
            if arg == "--check-hash-based-pycs":
                next(args, None)
                continue
            if arg[:2] == "--":
                continue
            return None   # a script, a module, stdin: no command
        flags = arg[1:]
        for i, flag in enumerate(flags):
            rest = flags[i + 1:]
            if flag == "c":
                return rest or next(args, None)
            if flag == "m":
                return None
            if flag in "XW":   # these take an argument: attached, or the next one
                if not rest:
                    next(args, None)
                break
    return None
