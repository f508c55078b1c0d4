"""The ``conveyor`` command's front door: help, version, exit statuses, and the
mistakes a user makes before any task runs (exit status 2, one line, no
traceback). Run as a real subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor._backends import builtin

from ._cli import run, workdir_with_tasks


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return workdir_with_tasks(tmp_path)


def test_help_names_every_backend_and_the_exit_statuses(workdir: Path) -> None:
    proc = run(workdir, "--help", command=())
    assert proc.returncode == 0, proc.stderr
    for name in builtin():   # a fresh process: the ones tests register are not there
        assert name in proc.stdout
    assert "exit status:" in proc.stdout
    for status in ("0 ", "1 ", "2 ", "130 "):
        assert f"\n  {status}" in proc.stdout
    proc = run(workdir, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--star" in proc.stdout and "--traceback" in proc.stdout
    assert "exit status:" in proc.stdout


def test_version(workdir: Path) -> None:
    import conveyor

    proc = run(workdir, "--version", command=())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"conveyor {conveyor.__version__}"


@pytest.mark.parametrize(("args", "message"), [
    (["tasks:double", "-i", "missing.jsonl"],
     "cannot read --input missing.jsonl: No such file or directory"),
    # A directory stands for an unreadable file: tests may run as root, who can
    # read a file whatever its mode.
    (["tasks:double", "-i", "."], "cannot read --input .: Is a directory"),
    (["tasks:double", "-o", "nodir/out.jsonl"], "cannot write --output nodir/out.jsonl"),
    (["tasks:double", "-i", "in.jsonl", "-o", "in.jsonl"], "is the input file"),
    (["tasks:double", "--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["tasks:double", "--timeout", "-1"], "argument --timeout: must be a number > 0"),
    (["tasks:adouble", "--backend", "thread"], "run it with --backend asyncio"),
    (["tasks:double", "--cluster", "tcp://x:1"], "--cluster names a dask scheduler"),
    (["tasks:NOT_A_FUNCTION"], "tasks:NOT_A_FUNCTION is int, not a function"),
    (["broken:f"], "importing 'broken' failed: ZeroDivisionError: division by zero "
                   "(--traceback shows where)"),
])
def test_usage_errors_exit_2_with_one_line(workdir: Path, args: list[str],
                                           message: str) -> None:
    (workdir / "broken.py").write_text("1 / 0\n")
    before = (workdir / "in.jsonl").read_text()
    proc = run(workdir, *args, stdin="1\n")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("conveyor run: ")
    assert proc.stdout == ""
    assert (workdir / "in.jsonl").read_text() == before   # never truncated
