"""``conveyor run MODULE:FUNCTION``: JSON Lines in, JSON Lines out, as a real command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ._cli import read_lines, run, started, workdir_with_tasks
from .conftest import HAS_DASK


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return workdir_with_tasks(tmp_path)


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
    assert proc.stderr.splitlines() == ["conveyor run: ValueError (item #3): three"]


def test_traceback_prints_the_tasks_traceback(workdir: Path) -> None:
    """--traceback: the worker's traceback, with the line that raised, then the line."""
    proc = run(workdir, "tasks:double", "--backend", "process", "--workers", "1",
               "--traceback", stdin="1\n3\n")
    assert proc.returncode == 1
    assert 'in double\n    raise ValueError("three")' in proc.stderr
    assert proc.stderr.splitlines()[-1] == "conveyor run: ValueError (item #1): three"


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
    """--on-error raise: a line that is not JSON stops the run like a failed task."""
    proc = run(workdir, "tasks:adouble", stdin="1\nnot json\n3\n")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == ["2"]
    assert proc.stderr.splitlines() == [
        "conveyor run: ValueError (item #1): input, line 2: not JSON (Expecting value)"]
    proc = run(workdir, "tasks:unjsonable", stdin="1\n")
    assert proc.returncode == 1
    assert "cannot be written as JSON" in proc.stderr


def test_bad_lines_follow_on_error_return(workdir: Path) -> None:
    """A line that is not JSON (or not UTF-8) fails its own item, in its place; so
    does a result that is not JSON. Blank lines are no items."""
    (workdir / "mixed.jsonl").write_bytes(b'1\nnot json\n\n\xff\n3\n{"x": 1}\n')
    proc = run(workdir, "tasks:double", "-i", "mixed.jsonl", "--on-error", "return")
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(out) == 5
    assert out[0] == {"x": 1, "double": 2}
    assert out[1] == {"error": "ValueError", "index": 1,
                      "message": "mixed.jsonl, line 2: not JSON (Expecting value)"}
    assert out[2]["index"] == 2 and out[2]["message"].startswith(
        "mixed.jsonl, line 4: not JSON ('utf-8' codec can't decode byte 0xff")
    assert out[3] == {"error": "ValueError", "message": "three", "index": 3}
    assert out[4]["error"] == "TypeError" and out[4]["index"] == 4   # {"x": 1} * 2
    assert "1 done, 4 failed" in proc.stderr


def test_bad_lines_follow_on_error_skip(workdir: Path) -> None:
    proc = run(workdir, "tasks:double", "--on-error", "skip", stdin="1\n[\n2\n")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["double"] for x in proc.stdout.splitlines()] == [2, 4]
    assert "2 done, 1 failed (left out of the output)" in proc.stderr


@pytest.mark.parametrize("target", ["tasks:add", "tasks:aadd"])
def test_star_spreads_arrays_and_objects(workdir: Path, target: str) -> None:
    """--star: an array is the positional arguments, an object the keyword ones; a
    scalar line fails its item (as --on-error says), naming the line."""
    lines = '[1, 2]\n{"a": 5, "b": 1}\n7\n[1, 2, 3]\n["a", "b"]\n'
    proc = run(workdir, target, "--star", "--on-error", "return", stdin=lines)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert out[:2] == [3, 6]
    assert out[2]["error"] == "TypeError" and out[2]["index"] == 2
    assert out[2]["message"].startswith("input, line 3: --star passes a JSON array")
    assert out[3]["error"] == "TypeError" and "positional argument" in out[3]["message"]
    assert out[4] == "ab"


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


def _file_lines(path: Path, n: int, limit: float) -> list[bytes]:
    """The lines of ``path`` once it has ``n`` (or once ``limit`` seconds pass)."""
    deadline = time.monotonic() + limit
    while True:
        data = path.read_bytes() if path.exists() else b""
        if data.count(b"\n") >= n or time.monotonic() >= deadline:
            return data.splitlines(keepends=True)
        time.sleep(0.01)   # polling the file: the condition is checked each time


@pytest.mark.parametrize("output", ["stdout", "file"])
def test_a_killed_run_keeps_every_line_it_wrote(workdir: Path, output: str) -> None:
    """Each output line is flushed as it is written: SIGKILL the command once it
    has written 20 lines (items 20 on hang), and each line written is whole
    JSON, the result of its input."""
    (workdir / "many.jsonl").write_text("".join(f"{i}\n" for i in range(100)))
    out = workdir / "out.jsonl"
    # As a user runs it: this session's PYTHONUNBUFFERED would hide a buffer.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    args = ["tasks:square_or_hang", "-i", "many.jsonl", "--workers", "4"]
    if output == "file":
        args += ["-o", str(out)]
    with (workdir / "stderr.txt").open("wb") as err, \
            started(workdir, *args, env=env, stderr=err) as proc:
        if output == "stdout":
            lines = read_lines(proc, 20, limit=20)
        else:
            lines = _file_lines(out, 20, limit=20)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        assert proc.stdout is not None
        rest = proc.stdout.read()
    if output == "stdout":
        lines += rest.splitlines(keepends=True)
    else:
        assert rest == b""
        lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == 20, (workdir / "stderr.txt").read_text()
    for i, line in enumerate(lines):
        assert line.endswith(b"\n")
        assert json.loads(line) == {"x": i, "square": i * i}


def test_a_closed_output_pipe_stops_the_run_without_a_traceback(workdir: Path) -> None:
    """``conveyor run ... | head -1``: the reader goes away; the command says so on
    one line and exits 1 (its writes get EPIPE: Python ignores SIGPIPE)."""
    # Far more output than a pipe holds, so that a write fails once it is closed.
    (workdir / "many.jsonl").write_text("".join(f"{i % 10}\n" for i in range(20_000)))
    with started(workdir, "tasks:add", "-i", "many.jsonl") as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert read_lines(proc, 1, limit=20)[:1] == [b"0\n"]
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        assert proc.wait(20) == 1
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert stderr.startswith("conveyor run: the output was closed after ")


# /dev/full (every write fails with ENOSPC) is Linux's; elsewhere nothing stands in.
@pytest.mark.parametrize("where", ["file", "stdout"] if os.path.exists("/dev/full") else [])
def test_a_full_disk_stops_the_run_without_a_traceback(workdir: Path, where: str) -> None:
    if where == "file":
        proc = run(workdir, "tasks:add", "-i", "in.jsonl", "-o", "/dev/full")
    else:
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-m", "conveyor", "run", "tasks:add",
                                   "-i", "in.jsonl"], cwd=workdir, stdout=full,
                                  stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "conveyor run: cannot write the output (No space left on device) after 0 results; "
        "stopping"]


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_task_calling_sys_exit_is_a_failed_task(workdir: Path, backend: str) -> None:
    """sys.exit(0) in the function fails its item: the command does not end with
    status 0 ("every item ran") after writing a few results."""
    proc = run(workdir, "tasks:exits", "-i", "in.jsonl", "--backend", backend)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout.splitlines() == ["0", "1", "2"]
    assert proc.stderr.splitlines() == ["conveyor run: SystemExit (item #3): 0"]
    proc = run(workdir, "tasks:exits", "-i", "in.jsonl", "--backend", backend,
               "--on-error", "return")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[3]) == {"error": "SystemExit", "message": "0",
                                                       "index": 3}


@pytest.mark.parametrize("on_error", ["raise", "return"])
def test_an_exception_whose_str_fails_is_reported(workdir: Path, on_error: str) -> None:
    proc = run(workdir, "tasks:unprintable", "-i", "in.jsonl", "--on-error", on_error)
    assert "Traceback" not in proc.stderr, proc.stderr
    if on_error == "raise":
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [
            "conveyor run: Unprintable (item #3): <exception str() failed>"]
    else:
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.splitlines()[3]) == {
            "error": "Unprintable", "message": "<exception str() failed>", "index": 3}
