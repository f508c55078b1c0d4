"""``conveyor run MODULE:FUNCTION``: map a function over a JSON Lines file.

Every input line is one JSON value, passed to the function as its only
argument (with --star, a JSON array is passed as the positional arguments and
an object as the keyword arguments); every output line is the JSON of one
result, in input order unless --unordered. The input is read lazily and
each result is written (and flushed) as it comes, so files larger than
memory stream through, and a run that is killed keeps every line it wrote.

A failed item -- the function raised, its result is not JSON, its input
line is not JSON -- is handled as --on-error says: "raise" (the default)
stops the command at the first failure, after writing every result before
it, and exits with status 1; "return" writes a line {"error": TYPE,
"message": TEXT, "index": N} in its place (N counts the input's items from
0, blank lines aside); "skip" leaves it out. With return and skip, the
count of failures goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from . import _api, _backends
from ._jsonl import AsyncLineCall, LineCall, count_lines, error_record, message_of, read_items
from ._options import OPTIONS
from ._progress import Counted
from ._results import Results
from .errors import item_index

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "EXIT_STATUS", "add_run_parser",
           "run_command"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: The exit statuses, for ``--help`` of ``conveyor`` and of ``conveyor run``.
EXIT_STATUS = """\
exit status:
  0    done: every item ran (with --on-error return or skip, the failed ones are
       in the output or counted on stderr)
  1    a task failed (--on-error raise), or the input could not be read or the
       output written to, in the middle of the run
  2    usage: a bad option, an input or output file that cannot be opened, a
       MODULE:FUNCTION that cannot be loaded, a run that could not start
  130  interrupted (Ctrl-C)"""

_PACKAGE = str(Path(__file__).resolve().parent)


class _Usage(Exception):
    """The command cannot start: say why on one line and exit with status 2."""


def add_run_parser(commands: Any) -> None:
    run = commands.add_parser(
        "run", help="map MODULE:FUNCTION over a JSON Lines file",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("target", metavar="MODULE:FUNCTION",
                     help="the function to run, e.g. mypkg.tasks:fetch (the current "
                          "directory is importable)")
    run.add_argument("--input", "-i", default="-", metavar="FILE",
                     help="JSON Lines input (default: standard input)")
    run.add_argument("--output", "-o", default="-", metavar="FILE",
                     help="JSON Lines output (default: standard output)")
    run.add_argument("--star", action="store_true",
                     help="spread each line over the function's arguments: a JSON array "
                          "as positional arguments, an object as keyword arguments")
    for o in OPTIONS:   # the options' own flags: dest is the option's name
        flag = o.cli
        if flag is None:
            continue
        extra: dict[str, Any] = {"action": flag.action} if flag.action else {
            "type": flag.type, "metavar": flag.metavar}
        if flag.choices is not None:
            extra["choices"] = flag.choices()
        run.add_argument(flag.flag, dest=o.name, default=o.default, help=flag.help,
                         **{k: v for k, v in extra.items() if v is not None})
    run.add_argument("--traceback", action="store_true",
                     help="print the failed task's traceback (with --on-error raise), or "
                          "the full traceback of a run that could not start")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    text = _flat(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load(target: str) -> Callable[..., Any]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise _Usage(f"expected MODULE:FUNCTION (e.g. tasks:fetch), got {target!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise _Usage(f"cannot import {module_name!r}: {exc} (run the command where the "
                     "module is, or put its directory on PYTHONPATH)") from exc
    except Exception as exc:   # the module itself raised while it was imported
        raise _Usage(f"importing {module_name!r} failed: {_one_line(exc)}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _Usage(f"{module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise _Usage(f"{target} is {type(obj).__name__}, not a function")
    fn: Callable[..., Any] = obj
    return fn


def _backend(target: str, fn: object, chosen: str | None) -> str:
    coroutine = _api.is_async_fn(fn)
    default = _backends.default_for(coroutine)
    if chosen is None:
        return default
    cls = _backends.backend_class(chosen)
    if coroutine and not cls.runs_coroutines:
        raise _Usage(f"{target} is a coroutine function (async def): run it with "
                     f"--backend {default} (the default for one), not --backend {chosen}")
    if not coroutine and not cls.runs_functions:
        others = [b for b in _backends.builtin() if _backends.backend_class(b).runs_functions]
        raise _Usage(f"{target} is not a coroutine function (async def), which --backend "
                     f"{chosen} needs: leave --backend out, or use {' or '.join(others)}")
    return chosen


def _options(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """The options of the run, from their flags; a worker option the backend does
    not take is a usage error, before any file is opened."""
    takes = _backends.backend_class(backend).options
    options = {}
    for o in OPTIONS:
        if o.cli is None or o.name == "backend":
            continue
        value = getattr(args, o.name)
        if o.kind == "worker" and o.name not in takes and not o.everywhere:
            if value != o.default:
                needs = " or ".join(_backends.taking(o.name))
                raise _Usage(f"{o.cli.flag} {o.summary}: it needs --backend {needs}")
            continue
        options[o.name] = value
    return options


def _open_files(args: argparse.Namespace, stack: contextlib.ExitStack
                ) -> tuple[IO[bytes], int]:
    """The input, and the output's file descriptor (see ``_write_line``)."""
    try:
        src: IO[bytes] = sys.stdin.buffer if args.input == "-" else stack.enter_context(
            open(args.input, "rb"))  # noqa: SIM115 - the stack closes it
    except OSError as exc:
        raise _Usage(f"cannot read --input {args.input}: {exc.strerror or exc}") from exc
    if args.input != "-" and args.output != "-":
        with contextlib.suppress(OSError):
            if os.path.samefile(args.input, args.output):
                raise _Usage(f"--output {args.output} is the input file: writing it "
                             "would erase the input before it is read")
    if args.output == "-":
        return src, sys.stdout.fileno()
    try:
        dst = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except OSError as exc:
        raise _Usage(f"cannot write --output {args.output}: {exc.strerror or exc}") from exc
    stack.callback(os.close, dst)
    return src, dst


def _write_line(fd: int, line: str) -> None:
    """One output line, written at once: no buffer holds it, so a run that is
    killed keeps it, and a failed write leaves nothing to fail again at exit."""
    data = memoryview((line + "\n").encode())
    while data:
        data = data[os.write(fd, data):]


def _start(args: argparse.Namespace, stack: contextlib.ExitStack
           ) -> tuple[Results[Any], int]:
    fn = _load(args.target)
    backend = _backend(args.target, fn, args.backend)
    options = _options(args, backend)
    src, dst = _open_files(args, stack)
    call = (AsyncLineCall if _api.is_async_fn(fn) else LineCall)(fn, args.star)
    name = "input" if args.input == "-" else args.input
    items: Iterable[Any] = read_items(src, name, args.star)
    if args.progress and args.input != "-":
        total = count_lines(args.input)
        if total is not None:
            items = Counted(items, total)   # the bar shows a total and an ETA
    try:
        results = _api.map(call, items, backend=backend, **options)
    except Exception as exc:   # refused before any work started (a dask cluster away...)
        text = _one_line(exc).replace("conveyor.map: ", "", 1)
        raise _Usage(f"the run could not start: {text}") from exc
    stack.enter_context(results)
    return results, dst


def _task_traceback(exc: BaseException) -> str:
    """``exc``'s traceback without conveyor's own frames: the task's, as the user
    wrote it (a worker process's comes as the cause, already formatted)."""
    shown = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    todo = [shown]
    while todo:
        te = todo.pop()
        if id(te) in seen:
            continue
        seen.add(id(te))
        te.stack = traceback.StackSummary.from_list(
            [f for f in te.stack if not f.filename.startswith(_PACKAGE)])
        todo.extend(t for t in (te.__cause__, te.__context__) if t is not None)
    return "".join(shown.format())


def _say(message: str) -> None:
    print(f"conveyor run: {message}", file=sys.stderr, flush=True)


def _flat(exc: BaseException) -> str:
    return " ".join(message_of(exc).split("\n"))


def _write(results: Results[Any], dst: int, args: argparse.Namespace) -> int:
    written = 0
    try:
        for value in results:
            if isinstance(value, BaseException):   # --on-error return
                index = item_index(value)
                line = json.dumps(error_record(value, -1 if index is None else index))
            else:
                line = value   # the task made the JSON (see _jsonl)
            try:
                _write_line(dst, line)
            except OSError as exc:
                closed = "the output was closed" if isinstance(exc, BrokenPipeError) else \
                    f"cannot write the output ({exc.strerror or exc})"
                _say(f"{closed} after {written} results; stopping")
                return EXIT_FAILED
            written += 1
    except BaseException as exc:   # a task failed (--on-error raise), or the input did
        if not isinstance(exc, Exception) and item_index(exc) is None:
            raise   # Ctrl-C, or the command's own exit: not a task's failure
        # A task's SystemExit (sys.exit(0) in the function) is a failed task too: it
        # must not end the command with its status, as if every item had run.
        if args.traceback:
            print(_task_traceback(exc), end="", file=sys.stderr)
        where = item_index(exc)
        at = f" (item #{where})" if where is not None else ""
        _say(f"{type(exc).__name__}{at}: {_flat(exc)}")
        return EXIT_FAILED
    s = results.stats
    if s.failed:
        left = " (left out of the output)" if args.on_error == "skip" else ""
        _say(f"{s.done} done, {s.failed} failed{left}")
    return EXIT_OK


def run_command(args: argparse.Namespace) -> int:
    """``conveyor run``: the exit status (see ``EXIT_STATUS``)."""
    try:
        with contextlib.ExitStack() as stack:
            results, dst = _start(args, stack)
            return _write(results, dst, args)
    except _Usage as exc:
        cause = exc.__cause__
        hint = ""
        if cause is not None and args.traceback:
            traceback.print_exception(cause, file=sys.stderr)
        elif cause is not None and not isinstance(cause, OSError):
            hint = " (--traceback shows where)"
        _say(f"{exc}{hint}")
        return EXIT_USAGE
