"""The one table of options (``conveyor._options.OPTIONS``) and what is made of it:
the TypedDicts of the signatures, the checks, the ``conveyor run`` flags."""

from __future__ import annotations

import argparse
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
    markdown_table,
)
from conveyor._runcmd import add_run_parser


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
