"""``conveyor run MODULE:FUNCTION``: map a function over a JSON Lines file.

Every input line is one JSON value, passed to the function as its only
argument; every output line is the JSON of one result (in input order unless
``--unordered``). The input is read lazily and results are written as they
come, so files larger than memory stream through. With ``--on-error return``
a failed item becomes a line ``{"error": TYPE, "message": TEXT, "index": N}``;
with ``skip`` it is left out (the count goes to stderr); with ``raise`` (the
default) the command stops at the first failure, after writing every result
before it, and exits with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from . import _api
from ._progress import Counted
from .errors import item_index

__all__ = ["add_run_parser", "count_lines", "run_command"]


def add_run_parser(commands: Any) -> None:
    run = commands.add_parser(
        "run", help="map MODULE:FUNCTION over a JSON Lines file",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("target", metavar="MODULE:FUNCTION",
                     help="the function to run, e.g. mypkg.tasks:fetch (the current "
                          "directory is importable)")
    run.add_argument("--input", "-i", default="-", metavar="FILE",
                     help="JSON Lines input (default: standard input)")
    run.add_argument("--output", "-o", default="-", metavar="FILE",
                     help="JSON Lines output (default: standard output)")
    run.add_argument("--backend", choices=["thread", "asyncio", "process", "dask"],
                     default=None,
                     help="default: asyncio for a coroutine function, else thread")
    run.add_argument("--cluster", default=None, metavar="ADDRESS",
                     help="dask: the scheduler's address (default: a LocalCluster for the "
                          "run)")
    run.add_argument("--workers", type=int, default=None)
    run.add_argument("--unordered", action="store_true",
                     help="write results as they complete, not in input order")
    run.add_argument("--window", type=int, default=None)
    run.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    run.add_argument("--retries", type=int, default=0)
    run.add_argument("--on-error", choices=["raise", "return", "skip"], default="raise")
    run.add_argument("--rate", type=float, default=None, metavar="PER_SECOND")
    run.add_argument("--progress", action="store_true", help="a progress bar on stderr")


def _load(target: str) -> Callable[[Any], Any]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"conveyor run: expected MODULE:FUNCTION, got {target!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"conveyor run: cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"conveyor run: {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise SystemExit(f"conveyor run: {target} is not callable")
    fn: Callable[[Any], Any] = obj
    return fn


def _lines(stream: IO[str], name: str) -> Iterator[Any]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}, line {number}: not JSON ({exc.msg})") from None


def _error_record(exc: BaseException) -> dict[str, Any]:
    return {"error": type(exc).__name__, "message": str(exc), "index": item_index(exc)}


def run_command(args: argparse.Namespace) -> int:
    fn = _load(args.target)
    with contextlib.ExitStack() as stack:
        src = sys.stdin if args.input == "-" else stack.enter_context(
            open(args.input, encoding="utf-8"))
        dst = sys.stdout if args.output == "-" else stack.enter_context(
            open(args.output, "w", encoding="utf-8"))
        items: Iterable[Any] = _lines(src, "input" if args.input == "-" else args.input)
        if args.progress and args.input != "-":
            total = count_lines(args.input)
            if total is not None:
                items = Counted(items, total)   # the bar shows a total and an ETA
        results = _api.map(
            fn, items,
            backend=args.backend, workers=args.workers, ordered=not args.unordered,
            window=args.window, timeout=args.timeout, retries=args.retries,
            on_error=args.on_error, rate=args.rate, progress=args.progress,
            cluster=args.cluster)
        with results:
            try:
                for n, value in enumerate(results):
                    if args.on_error == "return" and isinstance(value, BaseException) \
                            and item_index(value) is not None:
                        value = _error_record(value)
                    try:
                        line = json.dumps(value)
                    except (TypeError, ValueError) as exc:
                        raise TypeError(f"result #{n} cannot be written as JSON: {exc}; "
                                        "return JSON-compatible values") from None
                    dst.write(line + "\n")
            except Exception as exc:
                dst.flush()
                where = item_index(exc)
                at = f" (item #{where})" if where is not None else ""
                print(f"conveyor run: {type(exc).__name__}{at}: {exc}", file=sys.stderr)
                return 1
        dst.flush()
        s = results.stats
        if s.failed:
            print(f"conveyor run: {s.done} done, {s.failed} failed", file=sys.stderr)
    return 0


# A newline followed by a blank line (ASCII whitespace only, as `_lines` skips)
_BLANK_AFTER = re.compile(rb"\n(?=[ \t\r\f\v]*\n)")


def count_lines(path: str, *, chunk: int = 1 << 20) -> int | None:
    """The items in a JSON Lines file: its lines that are not blank (as ``_lines``
    reads them), counted beforehand for the progress bar's total; None when
    ``path`` is no regular file (a pipe, a device) or cannot be read.

    One pass in C over the bytes (``bytes.count`` and a regex that stops only
    at newlines): 0.10 to 0.15 s for a file of 1,000,000 lines (63 MB) in the
    page cache, where the run then finds it. The count can be high for a file
    with lines of non-ASCII whitespace only or lone ``\\r`` line ends; the
    bar's total is corrected when the run ends.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        lines = blank = 0
        # A blank line is seen at the newline before it: the start of the
        # file counts as one, and the one that ended the last chunk is kept
        # with what followed it (`x`: something not blank), so that a blank
        # line across two chunks is seen once.
        carry = b"\n"
        with open(path, "rb") as f:
            while data := f.read(chunk):
                lines += data.count(b"\n")
                buf = carry + data
                blank += len(_BLANK_AFTER.findall(buf))
                last = buf.rfind(b"\n")
                carry = b"\n" + (b"x" if buf[last + 1:].strip() else b"")
    except OSError:
        return None   # the run reports it when it opens the file
    return lines - blank + (carry == b"\nx")
