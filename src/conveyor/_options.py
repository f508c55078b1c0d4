"""The one table of options: each declared once, with its default, check, doc and flag.

``OPTIONS`` below is read by everything that deals with options: the checks
of ``map`` / ``amap`` / ``starmap`` / ``Pool`` / ``Pool.map`` / pipeline stages
(``_api``), the unknown-option errors (``_slips``), the ``conveyor run`` flags
(``_runcmd``) and the docs' tables: the options table (``markdown_table``,
checked by ``tests/test_docs.py`` against ``docs/guide/map.md``) and, through
the command's parser, its flag tables (``command_tables``, checked by
``tests/test_options.py`` against ``docs/guide/cli.md``).

The TypedDicts after it are the same options for the type checker (the
signatures' ``**options: Unpack[RunOptions]``); a test checks that they list
exactly the table's names. Adding an option therefore takes: its row in
``OPTIONS``, its line in a TypedDict (both here), and the code that uses it
(the engine's ``Options`` for a per-map option, a backend's constructor and
``options`` for a worker option).

Kinds: ``map`` options are a map's own (``Pool.map`` and stages take them
too); ``run`` ones (backend, workers) choose what it runs on; ``worker`` ones
say how the workers are made (``map``, stages and ``Pool``), and a backend's
class lists those it takes; ``pool`` ones only a ``Pool`` takes.
"""

from __future__ import annotations

import argparse
import math
import operator
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

__all__ = ["OPTIONS", "BackendName", "Flag", "MapOptions", "OnError", "Option", "PoolOptions",
           "RunOptions", "WorkerOptions", "by_kind", "cli_count", "cli_seconds", "command_tables",
           "flags_table", "map_fields", "markdown_table", "positive_int", "positive_number",
           "rewrite", "with_table", "with_tables"]

OnError = Literal["raise", "return", "skip"]
#: The built-in backends' names, for editors and type checkers; a registered
#: backend's name is any other ``str`` (see ``conveyor.register_backend``).
BackendName = Literal["thread", "asyncio", "process", "dask"]


# -- checks: (value, name, where) -> the normalised value ----------------------

def positive_int(value: object, name: str, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"{where}: {name} must be an int, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {value}")
    return value


def positive_number(value: object, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number of seconds, got {value!r}")
    if not value > 0:
        raise ValueError(f"{where}: {name} must be > 0, got {value!r}")
    return float(value)


Check = Callable[[Any, str, str], Any]


def _optional(check: Check) -> Check:
    return lambda value, name, where: None if value is None else check(value, name, where)


def _count(minimum: int) -> Check:
    return lambda value, name, where: positive_int(value, name, where, minimum)


def _as_is(value: Any, name: str, where: str) -> Any:
    return value


def _flag(value: object, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False, got {value!r}")
    return value


def _batch(value: object, name: str, where: str) -> int | None:
    if value == "auto":
        return None
    if isinstance(value, str):
        raise ValueError(f"{where}: batch must be 'auto' or an int >= 1, got {value!r}")
    return positive_int(value, name, where)


def _retry_on(value: Any, name: str, where: str) -> tuple[type[BaseException], ...]:
    if isinstance(value, type):
        value = (value,)
    if not isinstance(value, tuple) or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in value):
        raise TypeError(f"{where}: retry_on must be an exception class or a tuple of them, "
                        f"got {value!r}")
    return value


def _backoff(value: object, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{where}: backoff must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _on_error(value: object, name: str, where: str) -> str:
    if value not in typing.get_args(OnError):
        raise ValueError(f"{where}: on_error must be one of 'raise', 'return', 'skip'; "
                         f"got {value!r}")
    return str(value)


def _progress(value: object, name: str, where: str) -> tuple[bool, tuple[tuple[str, Any], ...]]:
    if isinstance(value, dict):
        return True, tuple(value.items())
    if isinstance(value, bool):
        return value, ()
    raise TypeError(f"{where}: progress must be True/False or a dict of tqdm options, "
                    f"got {value!r}")


def _text(value: object, name: str, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{where}: {name} must be a string, got {value!r}")
    return value


def _callable(value: object, name: str, where: str) -> object:
    if value is not None and not callable(value):
        raise TypeError(
            f"{where} {name}: the function to run must be callable, got {value!r} "
            f"({type(value).__name__}). Pass the function itself, not a call of it.")
    return value


def _initargs(value: object, name: str, where: str) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{where}: initargs must be a sequence of the initializer's "
                        f"arguments, e.g. (x,) or [x, y]; got {value!r}")
    return tuple(value)


def _forward_logs(value: object, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: forward_logs must be True (the workers' log records are "
                        "handled by this process's logging) or False, got "
                        f"{value!r}")
    return value


# -- command-line arguments -----------------------------------------------------

def cli_count(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def cli_seconds(text: str) -> float:
    """An argparse ``type``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


@dataclass(frozen=True)
class Flag:
    """An option's ``conveyor run`` flag; its value goes to the option of the same name."""

    flag: str
    help: str
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    #: "store_true" / "store_false" (a switch); None: takes a value.
    action: str | None = None
    #: The values it takes (called when the parser is built: e.g. the backends' names).
    choices: Callable[[], list[str]] | None = None
    #: The values the docs' table lists, where ``choices`` depends on what this
    #: process has registered (else ``choices``).
    shown_choices: Callable[[], list[str]] | None = None


@dataclass(frozen=True)
class Option:
    """One option: its name, default, check, one line of docs, and flag."""

    name: str
    default: Any
    #: ``check(value, name, where)``: the normalised value; raises TypeError or
    #: ValueError saying what to give instead.
    check: Check
    doc: str
    kind: Literal["map", "run", "worker", "pool"]
    cli: Flag | None = None
    #: A worker option: what it is, for the error when a backend does not take it.
    summary: str = ""
    #: A worker option every backend accepts, given only to those whose class
    #: lists it (the others have nothing to do for it).
    everywhere: bool = False
    #: How the default reads in the docs' table (else ``repr(default)``).
    shown_default: str = ""


def _backend_names() -> list[str]:
    from . import _backends

    return _backends.names()


def _builtin_backends() -> list[str]:
    from . import _backends

    return _backends.builtin()


OPTIONS: tuple[Option, ...] = (
    Option("ordered", True, _flag, "results in input order; `False`: as they complete",
           "map", Flag("--unordered", "write results as they complete, not in input order",
                       action="store_false")),
    Option("window", None, _optional(positive_int),
           "most items taken from the input and not yet handed to you (read ahead, "
           "running, queued, waiting to be retried or reordered); `None`: "
           "`max(4 * workers, 2 * workers * batch size)`, the second term capped at 65,536",
           "map", Flag("--window", "items in flight or waiting to be written, at most "
                       "(default: a few times --workers)",
                       "N", cli_count(1))),
    Option("batch", "auto", _batch,
           "items per batch: adaptive (see [what runs when]"
           "(../design/architecture.md#what-runs-when-batches)), or a fixed int", "map"),
    Option("timeout", None, _optional(positive_number),
           "seconds per task; an overdue task fails with `TaskTimeout` (see "
           "[Timeouts and retries](timeouts.md))",
           "map", Flag("--timeout", "per task: an overdue task fails with TaskTimeout "
                       "(default: none)",
                       "SECONDS", cli_seconds)),
    Option("retries", 0, _count(0),
           "extra attempts for a failed task, after `backoff * 2**attempt` seconds "
           "± 50 % jitter (capped at 60 s)",
           "map", Flag("--retries", "extra attempts for a failed task (default: 0)", "N",
                       cli_count(0))),
    Option("retry_on", (Exception,), _retry_on, "which exceptions are retried", "map",
           shown_default="`(Exception,)`"),
    Option("backoff", 0.1, _backoff, "base delay of the retries, seconds", "map"),
    Option("on_error", "raise", _on_error,
           "`\"raise\"`, `\"return\"` or `\"skip\"` (see [Errors](errors.md))",
           "map", Flag("--on-error", "what a failed item does (default: raise)",
                       choices=lambda: list(typing.get_args(OnError)))),
    Option("rate", None, _optional(positive_number),
           "at most this many task starts per second, evenly spaced (no bursts)",
           "map", Flag("--rate", "task starts per second, at most (default: no limit)",
                       "PER_SECOND",
                       cli_seconds)),
    Option("progress", False, _progress,
           "a tqdm bar counting items (`tqdm.auto`: a widget in notebooks); a dict passes "
           "options to tqdm (see [Progress](progress.md))",
           "map", Flag("--progress", "a progress bar on stderr", action="store_true")),
    Option("desc", None, _text, "the progress bar's label", "map"),
    Option("backend", None, _as_is,
           "a backend's name (see [Choosing a backend](backends.md)); `None` picks the "
           "default for the function: `\"asyncio\"` for coroutine functions, else "
           "`\"thread\"`",
           "run", Flag("--backend", "the backend to run on (default: asyncio for a coroutine "
                       "function, else thread)",
                       choices=_backend_names, shown_choices=_builtin_backends)),
    Option("workers", None, _optional(positive_int),
           "threads, concurrent coroutines, processes, or dask tasks at once; on dask "
           "`None` counts the cluster's threads, again as the run goes",
           "run", Flag("--workers", "threads, coroutines or processes (default: the "
                       "backend's)", "N", cli_count(1)), shown_default="per backend"),
    Option("initializer", None, _callable,
           "`initializer(*initargs)` runs once in each worker as it starts (see "
           "[`worker_state`](pools.md#worker-state))", "worker"),
    Option("initargs", (), _initargs, "the initializer's arguments", "worker"),
    Option("max_tasks_per_worker", None, _optional(positive_int),
           "processes only: a worker is replaced by a fresh one after this many tasks (a "
           "library that leaks memory)", "worker",
           summary="replaces a worker after that many tasks"),
    Option("cluster", None, _as_is,
           "dask only: a `distributed.Client`, a scheduler address or a cluster object; "
           "`None`: the current Client, else a LocalCluster for the call (see "
           "[Dask](dask.md))", "worker",
           Flag("--cluster", "with --backend dask: the scheduler's address (default: a "
                "LocalCluster for the run)", "ADDRESS"),
           summary="names a dask scheduler or cluster to run on"),
    Option("forward_logs", True, _forward_logs,
           "what process and dask workers log is handled by this process's logging (see "
           "[Logging](logging.md)); `False` leaves it in the workers", "worker",
           everywhere=True),
    Option("loop", None, _as_is,
           "`Pool` only, asyncio: the event loop (one you run) the coroutines run on; "
           "`None`: conveyor's own", "pool", summary="is the event loop coroutines run on"),
    Option("thread_name_prefix", "", _text,
           "`Pool` only, threads: the worker threads are named `PREFIX_1`, `PREFIX_2` and so on",
           "pool", summary="names the worker threads"),
)

_BY_NAME = {o.name: o for o in OPTIONS}


def by_kind(*kinds: str) -> list[Option]:
    """The options of these kinds, in the table's order."""
    return [o for o in OPTIONS if o.kind in kinds]


def option(name: str) -> Option:
    return _BY_NAME[name]


def map_fields(where: str, given: dict[str, Any]) -> dict[str, Any]:
    """The ``map`` options, their defaults filled in and checked, as the engine's
    ``Options`` fields; the relations between options are checked after each alone."""
    fields: dict[str, Any] = {}
    for o in by_kind("map"):
        fields[o.name] = o.check(given.get(o.name, o.default), o.name, where)
    fields["progress"], fields["progress_options"] = fields["progress"]
    rate, fixed, win = fields["rate"], fields["batch"], fields["window"]
    if rate is not None and fixed is not None and fixed > 1:
        raise ValueError(f"{where}: rate= spaces task starts evenly, one item per batch; it "
                         f"conflicts with batch={fixed}. Leave batch='auto' with rate=.")
    if win is not None and fixed is not None and fixed > win:
        raise ValueError(f"{where}: batch={fixed} is larger than window={win}; a batch must "
                         "fit in the window. Raise window or lower batch.")
    if fields["progress"]:
        from ._progress import import_tqdm

        import_tqdm(where)   # not installed: say so before any work starts
    return fields


def markdown_table() -> str:
    """The options table of ``docs/guide/map.md`` (between its ``options`` markers)."""
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for o in OPTIONS:
        default = o.shown_default or repr(o.default).replace("'", '"')
        rows.append(f"| `{o.name}` | {default if o.shown_default else f'`{default}`'} "
                    f"| {o.doc} |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def flags_table(parser: argparse.ArgumentParser) -> str:
    """The table of a command's flags, from its parser: each flag as ``--help``
    shows it, with its help text (which says the default) and its choices. A
    flag of an option whose ``Flag`` has ``shown_choices`` lists those, not the
    parser's (the backends registered in this process are not the docs')."""
    rows = ["| flag | meaning |", "| --- | --- |"]
    for action in parser._actions:   # argparse has no public list of a parser's flags
        if "--help" in action.option_strings or action.help == argparse.SUPPRESS:
            continue
        own = _BY_NAME.get(action.dest)
        flag = own.cli if own is not None and own.cli is not None else None
        choices = [str(c) for c in action.choices or ()]
        if flag is not None and flag.shown_choices is not None:
            choices = flag.shown_choices()
        value = f"{{{','.join(choices)}}}" if choices else action.metavar
        if action.nargs == 0:
            value = None   # a switch
        shown = [f"`{s} {value}`" if value else f"`{s}`" for s in action.option_strings]
        params = dict(vars(action), prog=parser.prog, choices=", ".join(choices))
        help_text = (action.help or "") % params   # as argparse expands it for --help
        if not action.option_strings:
            shown, help_text = [f"`{action.metavar or action.dest}`"], f"required: {help_text}"
        rows.append(f"| {', '.join(shown)} | {_cell(help_text)} |")
    return "\n".join(rows) + "\n"


def command_tables(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The flag tables of ``docs/guide/cli.md``, by marker name, from the parser
    of the ``conveyor`` command (``conveyor.cli.build_parser()``)."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {f"cli-{name}": flags_table(sub) for name, sub in commands.choices.items()}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"


def with_tables(page: str, tables: dict[str, str]) -> str:
    """``page`` (Markdown) with each of ``tables`` between its markers
    (``<!-- NAME:start -->`` and ``<!-- NAME:end -->``); raises ValueError if a
    pair of markers is missing."""
    for name, table in tables.items():
        start, end = _markers(name)
        head, sep, rest = page.partition(start)
        _, sep2, tail = rest.partition(end)
        if not (sep and sep2):
            raise ValueError(f"the page has no {start.strip()} ... {end} markers")
        page = head + start + table + end + tail
    return page


def with_table(page: str) -> str:
    """``page`` (Markdown) with :func:`markdown_table` between its ``options`` markers."""
    return with_tables(page, {"options": markdown_table()})


def rewrite(path: str, tables: dict[str, str] | None = None) -> None:
    """Regenerate the tables of the Markdown page at ``path``: ``tables`` (by
    marker name), by default the options table."""
    with open(path, encoding="utf-8") as f:
        page = f.read()
    page = with_tables(page, {"options": markdown_table()} if tables is None else tables)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


class MapOptions(TypedDict, total=False):
    """The per-map options (``Pool.map``, pipeline stages); see :func:`map`."""

    ordered: bool
    window: int | None
    batch: int | Literal["auto"]
    timeout: float | None
    retries: int
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    backoff: float
    on_error: OnError
    rate: float | None
    progress: bool | dict[str, Any]
    desc: str | None


class WorkerOptions(TypedDict, total=False):
    """How the workers are made (``map``, stages, ``Pool``)."""

    initializer: Callable[..., object] | None
    initargs: Iterable[Any]
    max_tasks_per_worker: int | None
    cluster: Any
    forward_logs: bool


class RunOptions(MapOptions, WorkerOptions, total=False):
    """Every option of :func:`map`: the map's own, what it runs on, and its workers."""

    backend: BackendName | str | None
    workers: int | None


class PoolOptions(WorkerOptions, total=False):
    """The keyword options of ``Pool(backend, workers, **options)``."""

    loop: Any
    thread_name_prefix: str

