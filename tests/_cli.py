"""The ``conveyor`` command run as a subprocess: the tasks it runs, and a runner."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TASKS = textwrap.dedent("""
    import asyncio
    import threading

    def double(x):
        if x == 3:
            raise ValueError("three")
        return {"x": x, "double": 2 * x}

    async def adouble(x):
        await asyncio.sleep(0)
        return 2 * x

    def unjsonable(x):
        return {1, 2}

    def add(a, b=0):
        return a + b

    async def aadd(a, b=0):
        return a + b

    def square_or_hang(x):
        if x >= 20:
            threading.Event().wait(30)   # until the test kills the command
        return {"x": x, "square": x * x}

    def exits(x):
        if x == 3:
            raise SystemExit(0)   # sys.exit(0) in the task: not the command's own exit
        return x

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no str")

    def unprintable(x):
        if x == 3:
            raise Unprintable()
        return x

    NOT_A_FUNCTION = 5
""")


def workdir_with_tasks(tmp_path: Path) -> Path:
    """``tmp_path`` with tasks.py (the functions above) and in.jsonl (0 to 9)."""
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "in.jsonl").write_text("".join(f"{i}\n" for i in range(10)) + "\n")
    return tmp_path


def run(workdir: Path, *args: str, stdin: str | None = None,
        command: tuple[str, ...] = ("run",)) -> subprocess.CompletedProcess[str]:
    """``python -m conveyor run ARGS`` in ``workdir``, to its end."""
    return subprocess.run([sys.executable, "-m", "conveyor", *command, *args], cwd=workdir,
                          input=stdin, capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def started(workdir: Path, *args: str, env: dict[str, str] | None = None,
            stderr: IO[Any] | int = subprocess.PIPE) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m conveyor run ARGS`` running, its stdout a pipe; killed (if it
    still runs) and its pipes closed when the block ends."""
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "run", *args], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=stderr)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def read_lines(proc: subprocess.Popen[bytes], n: int, limit: float) -> list[bytes]:
    """The first ``n`` lines of ``proc``'s stdout, as they arrive; fewer if ``limit``
    seconds pass first (what a run that holds its output in a buffer gives)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + limit
    while data.count(b"\n") < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.splitlines(keepends=True)
