"""The backend registry: a backend written outside conveyor, registered from here,
runs through every entry point; what a backend can do is read from its class.

``tests/_inline_backend.py`` is that backend; no conveyor source knows its name.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import _backends, cli
from conveyor._backends.thread import ThreadBackend, WorkerContext

from ._cli import workdir_with_tasks
from ._inline_backend import InlineBackend

ROOT = Path(__file__).resolve().parent.parent

# By path: the registry imports the module when the backend is first used.
conveyor.register_backend("inline", "tests._inline_backend:InlineBackend")


def triple(x: int) -> int:
    if x == 5:
        raise ValueError("five")
    return 3 * x


async def atriple(x: int) -> int:
    return 3 * x


def test_importing_conveyor_imports_no_backend_and_no_dask() -> None:
    code = ("import sys, conveyor; print(sorted(m for m in sys.modules "
            "if m.startswith(('conveyor._backends.', 'distributed', 'dask'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr
    # the registry itself, and the ABC every backend is written against: no backend
    assert proc.stdout.strip() == str(["conveyor._backends._base",
                                       "conveyor._backends._capabilities"])


def test_a_registered_backend_runs_map_starmap_and_the_error_policy() -> None:
    assert "inline" in _backends.names()
    out: list[Any] = list(conveyor.map(triple, range(10), backend="inline", on_error="return"))
    assert [type(r) for r in out].count(ValueError) == 1
    assert [r for r in out if not isinstance(r, ValueError)] == [3 * x for x in range(10)
                                                                 if x != 5]
    assert list(conveyor.starmap(pow, [(2, 3), (3, 2)], backend="inline", workers=1)) == [8, 9]
    with pytest.raises(ValueError, match="five"):
        list(conveyor.map(triple, range(10), backend="inline", workers=3))
    # its class's default worker count, and the same answer unordered
    assert sorted(conveyor.map(abs, range(-50, 0), backend="inline", ordered=False,
                               batch=4)) == list(range(1, 51))


def test_a_registered_backend_runs_amap_of_a_plain_function() -> None:
    async def main() -> list[int]:
        return [r async for r in conveyor.amap(abs, range(-20, 0), backend="inline")]

    assert asyncio.run(main()) == list(range(20, 0, -1))


def test_a_registered_backend_in_a_pool_and_a_pipeline_stage() -> None:
    seen: list[str] = []

    def init(tag: str) -> None:
        conveyor.worker_state()["tag"] = tag

    def tagged(x: int) -> str:
        seen.append(threading.current_thread().name)
        return f"{conveyor.worker_state()['tag']}{x}"

    with conveyor.Pool(backend="inline", workers=2, initializer=init, initargs=("t",)) as pool:
        assert pool.workers == 2
        assert list(pool.map(tagged, range(6))) == [f"t{x}" for x in range(6)]
        assert pool.submit(tagged, 7).result(timeout=30) == "t7"
    assert set(seen) <= {"conveyor-inline-1", "conveyor-inline-2"}
    out = (conveyor.stream(range(10))
           .map(triple, backend="inline", on_error="skip")
           .filter(lambda y: y % 2 == 0, backend="inline")
           .to_list())
    assert out == [3 * x for x in range(10) if x != 5 and (3 * x) % 2 == 0]


def test_what_a_backend_cannot_run_is_refused_with_its_class_message() -> None:
    with pytest.raises(TypeError, match=r"atriple is a coroutine function, which the "
                                        r"'inline' backend cannot run; use backend='asyncio'"):
        conveyor.map(atriple, [1], backend="inline")
    with pytest.raises(ValueError, match=r"unknown backend 'gpu'; choose one of 'thread', "
                                         r"'asyncio', 'process', 'dask', .*'inline'"):
        conveyor.map(abs, [1], backend="gpu")


@pytest.mark.parametrize(("backend", "option", "value", "takers"), [
    ("thread", "loop", "LOOP", "'asyncio'"),
    ("inline", "cluster", "tcp://x:1", "'dask'"),
    ("inline", "max_tasks_per_worker", 3, "'process'"),
    ("asyncio", "thread_name_prefix", "w", "'thread'"),
])
def test_an_option_the_backend_does_not_take_names_those_that_do(
        backend: str, option: str, value: Any, takers: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        given = loop if value == "LOOP" else value
        with pytest.raises(ValueError, match=rf"conveyor\.Pool: {option}= .*; it needs "
                                             rf"backend={takers} \(got backend='{backend}'\)"):
            conveyor.Pool(backend, None, **{option: given})  # type: ignore[arg-type]
    finally:
        loop.close()


def test_an_unknown_pool_option_is_a_conveyor_error_with_a_suggestion() -> None:
    with pytest.raises(TypeError, match=r"conveyor\.Pool: unexpected option lop=; did you "
                                        r"mean loop=\?"):
        conveyor.Pool(backend="asyncio", lop=1)  # type: ignore[call-arg]


def test_register_backend_refuses_what_is_not_a_backend() -> None:
    with pytest.raises(TypeError, match="not a subclass of conveyor's Backend"):
        conveyor.register_backend("nothing", dict)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'module:Class' path"):
        conveyor.register_backend("nothing", "no_colon_here")
    with pytest.raises(ValueError, match=r"the name 'thread' is taken by "
                                         r"conveyor\._backends\.thread:ThreadBackend"):
        conveyor.register_backend("thread", InlineBackend)
    with pytest.raises(ValueError, match=r"says name = 'inline'; register it under that "
                                         r"name, or set name = 'other'"):
        conveyor.register_backend("other", InlineBackend)
    with pytest.raises(TypeError, match="an identifier"):
        conveyor.register_backend("no spaces", InlineBackend)
    conveyor.register_backend("inline", InlineBackend)   # the same backend again: harmless
    assert _backends.backend_class("inline") is InlineBackend


def test_the_command_line_runs_a_registered_backend_in_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    (tmp_path / "registry_cli_tasks.py").write_text(
        "def triple(x):\n    return 3 * x\n")
    (tmp_path / "in.jsonl").write_text("".join(f"{i}\n" for i in range(8)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    status = cli.main(["run", "registry_cli_tasks:triple", "-i", "in.jsonl", "-o",
                       "out.jsonl", "--backend", "inline", "--workers", "2"])
    assert status == 0, capsys.readouterr().err
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().split()] == \
        [3 * i for i in range(8)]
    status = cli.main(["run", "registry_cli_tasks:triple", "-i", "in.jsonl",
                       "--backend", "inline", "--cluster", "tcp://x:1"])
    assert status == 2
    assert "--cluster names a dask scheduler or cluster to run on: it needs --backend dask" \
        in capsys.readouterr().err


def test_the_command_line_finds_a_backend_by_its_entry_point(tmp_path: Path) -> None:
    """An installed distribution offers the backend in the ``conveyor.backends``
    group: a fresh ``conveyor`` process finds it without any registering call."""
    site = tmp_path / "site"
    info = site / "conveyor_inline-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: conveyor-inline\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[conveyor.backends]\ninline = tests._inline_backend:InlineBackend\n")
    (tmp_path / "work").mkdir()
    workdir = workdir_with_tasks(tmp_path / "work")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), str(site)])}
    proc = subprocess.run([sys.executable, "-m", "conveyor", "run", "tasks:double", "-i",
                           "in.jsonl", "--backend", "inline", "--on-error", "return"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[3] == {"error": "ValueError", "message": "three", "index": 3}
    assert [r["double"] for i, r in enumerate(lines) if i != 3] == \
        [2 * i for i in range(10) if i != 3]
    helped = subprocess.run([sys.executable, "-m", "conveyor", "run", "--help"], cwd=workdir,
                            env=env, capture_output=True, text=True, timeout=60)
    assert "inline" in helped.stdout


# -- the thread backend's seam ---------------------------------------------------

opened: list[sqlite3.Connection] = []
closed: list[sqlite3.Connection] = []


class DatabaseContext(WorkerContext):
    """A worker thread that holds its own database connection for its tasks."""

    def initialize(self) -> None:
        super().initialize()
        db = sqlite3.connect(":memory:")
        opened.append(db)
        conveyor.worker_state()["db"] = db

    def finalize(self) -> None:
        db = conveyor.worker_state()["db"]
        db.close()
        closed.append(db)


class DatabaseThreads(ThreadBackend):
    name = "database_threads"
    context = DatabaseContext


def squared_in_sql(x: int) -> int:
    db = conveyor.worker_state()["db"]
    value: int = db.execute("select ? * ?", (x, x)).fetchone()[0]
    return value


def test_a_thread_backend_variant_is_a_small_worker_context_subclass() -> None:
    conveyor.register_backend("database_threads", DatabaseThreads)
    opened.clear()
    closed.clear()
    assert list(conveyor.map(squared_in_sql, range(30), backend="database_threads",
                             workers=3, batch=2)) == [x * x for x in range(30)]
    # the run's end stopped its workers: each one closed the connection it opened
    assert 1 <= len(opened) <= 3
    assert closed == opened or sorted(map(id, closed)) == sorted(map(id, opened))
    # a timed run takes the context's other path, and its initializer still runs first
    with conveyor.Pool(backend="database_threads", workers=2,
                       initializer=lambda: conveyor.worker_state().update(seen=True)) as pool:
        assert list(pool.map(squared_in_sql, range(5), timeout=30)) == [0, 1, 4, 9, 16]
        assert pool.submit(lambda: conveyor.worker_state()["seen"]).result(timeout=30)
    assert len(closed) == len(opened)
