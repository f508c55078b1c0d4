"""The one table of options (``conveyor._options.OPTIONS``) and what is made of it:
the TypedDicts of the signatures, the checks, the ``conveyor run`` flags and
the flag tables of ``docs/guide/cli.md``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import _api, _backends
from conveyor._options import (
    OPTIONS,
    MapOptions,
    PoolOptions,
    RunOptions,
    WorkerOptions,
    by_kind,
    command_tables,
    markdown_table,
    with_tables,
)
from conveyor._runcmd import add_run_parser
from conveyor.cli import build_parser

from ._cli import run

CLI_PAGE = Path(__file__).resolve().parent.parent / "docs" / "guide" / "cli.md"


def names(*kinds: str) -> set[str]:
    return {o.name for o in by_kind(*kinds)}


def test_the_typed_dicts_list_exactly_the_table_options() -> None:
    assert len({o.name for o in OPTIONS}) == len(OPTIONS), "an option declared twice"
    typed_dicts: list[tuple[Any, tuple[str, ...]]] = [
        (MapOptions, ("map",)), (WorkerOptions, ("worker",)),
        (RunOptions, ("map", "run", "worker")), (PoolOptions, ("worker", "pool"))]
    for typed, kinds in typed_dicts:
        assert set(typed.__annotations__) == names(*kinds), typed.__name__
        assert typed.__total__ is False, f"{typed.__name__}: every option is optional"


def test_every_option_has_a_doc_and_its_default_passes_its_own_check() -> None:
    for o in OPTIONS:
        assert o.doc and not o.doc.endswith("."), o.name
        o.check(o.default, o.name, "here")   # raises if the default is refused
        if o.kind == "worker" and not o.everywhere and o.name not in (
                "initializer", "initargs"):
            assert o.summary, f"{o.name}: the error for a backend that does not take it"
    for name in ("ordered", "timeout", "retries"):
        assert f"| `{name}` |" in markdown_table()


def test_the_api_reads_its_defaults_and_names_from_the_table() -> None:
    assert {o.name: o.default for o in by_kind("map")} == _api.MAP_DEFAULTS
    assert set(_api.WORKER_OPTIONS) == names("worker")
    # every option of map is known to map: none is refused as unknown
    with pytest.raises(TypeError, match=r"unexpected option nope=.* takes: ordered, window"):
        conveyor.map(abs, [1], nope=1)  # type: ignore[call-overload]


def test_every_worker_option_is_taken_by_some_backend() -> None:
    for o in by_kind("worker", "pool"):
        assert _backends.taking(o.name), f"no backend takes {o.name}"


def test_the_run_flags_are_made_from_the_table() -> None:
    parser = argparse.ArgumentParser()
    add_run_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", "m:f"])
    flagged = [o for o in OPTIONS if o.cli is not None]
    assert {o.name for o in flagged} >= {"ordered", "window", "timeout", "retries",
                                         "on_error", "rate", "progress", "backend",
                                         "workers", "cluster"}
    for o in flagged:
        assert getattr(args, o.name) == o.default, o.name
    given: dict[str, Any] = vars(parser.parse_args(
        ["run", "m:f", "--unordered", "--window", "8", "--timeout", "1.5", "--retries", "2",
         "--on-error", "skip", "--rate", "10", "--progress", "--backend", "process",
         "--workers", "3", "--cluster", "tcp://x:1"]))
    assert {k: given[k] for k in ("ordered", "window", "timeout", "retries", "on_error",
                                  "rate", "progress", "backend", "workers", "cluster")} == {
        "ordered": False, "window": 8, "timeout": 1.5, "retries": 2, "on_error": "skip",
        "rate": 10.0, "progress": True, "backend": "process", "workers": 3,
        "cluster": "tcp://x:1"}


def cli_page() -> str:
    return CLI_PAGE.read_text(encoding="utf-8")


def between(page: str, name: str) -> str:
    return page.split(f"<!-- {name}:start -->")[1].split(f"<!-- {name}:end -->")[0]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions
                if isinstance(a, argparse._SubParsersAction)).choices


def test_the_cli_flag_tables_are_generated_from_the_parser() -> None:
    page = cli_page()
    assert with_tables(page, command_tables(build_parser())) == page, (
        "docs/guide/cli.md's flag tables are not the command's flags: regenerate them with "
        "python -c \"import conveyor._options as o, conveyor.cli as c; "
        "o.rewrite('docs/guide/cli.md', o.command_tables(c.build_parser()))\"")


def test_every_flag_of_the_command_is_in_the_docs() -> None:
    page = cli_page()
    for name, sub in subcommands().items():
        table = between(page, f"cli-{name}")
        for action in sub._actions:
            if "--help" in action.option_strings:
                continue
            for flag in action.option_strings or [str(action.metavar)]:
                assert f"| `{flag}" in table or f", `{flag}" in table, f"{name}: {flag}"
    run_table = between(page, "cli-run")
    for o in OPTIONS:
        if o.cli is not None:
            assert f"| `{o.cli.flag}" in run_table, o.name


@pytest.mark.parametrize("command", ["run", "demo"])
def test_the_docs_say_what_help_says(tmp_path: Path, command: str) -> None:
    # A fresh process: the backends this test run registered are not in its choices.
    helped = run(tmp_path, "--help", command=(command,))
    assert helped.returncode == 0, helped.stderr
    shown = "".join(helped.stdout.split())   # --help wraps its lines where it likes
    rows = between(cli_page(), f"cli-{command}").strip().splitlines()[2:]
    assert rows
    for row in rows:
        flags, meaning = row.strip("| ").split(" | ")
        # each spelling with its value or choices, as --help shows them (3.13 shows
        # "--input, -i FILE" where 3.12 shows "--input FILE, -i FILE": the usage
        # line has "[--input FILE]" in both)
        for spelling in flags.split("`")[1::2]:
            assert "".join(spelling.split()) in shown, spelling
        # the help text, its defaults and choices, word for word
        assert "".join(meaning.removeprefix("required: ").split()) in shown, row


def test_a_page_without_the_markers_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no <!-- cli-run:start --> \.\.\. <!-- cli-run:end -->"):
        with_tables("# a page\n", {"cli-run": "| flag |\n"})
