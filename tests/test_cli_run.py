"""``conveyor run MODULE:FUNCTION``: JSON Lines in, JSON Lines out, as a real command."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import HAS_DASK

TASKS = textwrap.dedent("""
    import asyncio

    def double(x):
        if x == 3:
            raise ValueError("three")
        return {"x": x, "double": 2 * x}

    async def adouble(x):
        await asyncio.sleep(0)
        return 2 * x

    def unjsonable(x):
        return {1, 2}
""")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "in.jsonl").write_text("".join(f"{i}\n" for i in range(10)) + "\n")
    return tmp_path


def run(workdir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", "run", *args], cwd=workdir,
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_on_error_return_writes_error_records(workdir: Path) -> None:
    proc = run(workdir, "tasks:double", "-i", "in.jsonl", "-o", "out.jsonl",
               "--on-error", "return", "--workers", "3")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in (workdir / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 10
    assert lines[3] == {"error": "ValueError", "message": "three", "index": 3}
    assert [x["double"] for i, x in enumerate(lines) if i != 3] == \
        [2 * i for i in range(10) if i != 3]
    assert "9 done, 1 failed" in proc.stderr


def test_raise_stops_after_the_results_before_it(workdir: Path) -> None:
    proc = run(workdir, "tasks:double", stdin="".join(f"{i}\n" for i in range(10)))
    assert proc.returncode == 1
    assert [json.loads(x)["x"] for x in proc.stdout.splitlines()] == [0, 1, 2]
    assert "ValueError (item #3): three" in proc.stderr


def test_coroutine_function_unordered(workdir: Path) -> None:
    proc = run(workdir, "tasks:adouble", "--unordered", stdin="1\n2\n3\n")
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(x) for x in proc.stdout.splitlines()) == [2, 4, 6]


@pytest.mark.parametrize(("target", "message"), [
    ("nosuch:f", "cannot import 'nosuch'"),
    ("tasks:missing", "has no 'missing'"),
    ("tasks", "expected MODULE:FUNCTION"),
])
def test_bad_target(workdir: Path, target: str, message: str) -> None:
    proc = run(workdir, target, stdin="1\n")
    assert proc.returncode != 0
    assert message in proc.stderr


def test_bad_input_and_output(workdir: Path) -> None:
    proc = run(workdir, "tasks:adouble", stdin="1\nnot json\n")
    assert proc.returncode == 1
    assert "line 2: not JSON" in proc.stderr
    proc = run(workdir, "tasks:unjsonable", stdin="1\n")
    assert proc.returncode == 1
    assert "cannot be written as JSON" in proc.stderr


@pytest.mark.parametrize("backend", [
    "process",
    pytest.param("dask", marks=pytest.mark.skipif(
        not HAS_DASK, reason="dask is not installed (the dev extra has it)")),
])
def test_worker_backends_import_the_module_in_their_workers(workdir: Path,
                                                            backend: str) -> None:
    """The workers import tasks.py from the command's directory (its sys.path); on
    dask, without --cluster, the command starts a LocalCluster of its own and stops it."""
    proc = run(workdir, "tasks:double", "-i", "in.jsonl", "--backend", backend,
               "--workers", "2", "--on-error", "return")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert lines[3] == {"error": "ValueError", "message": "three", "index": 3}
    assert [x["double"] for i, x in enumerate(lines) if i != 3] == \
        [2 * i for i in range(10) if i != 3]
