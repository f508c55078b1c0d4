"""Remote tracebacks are formatted in the parent, with the parent's source lines.

A function defined with ``python -c`` or in a notebook cell has its source only
in the process that defined it: the worker sends the frames, the parent looks
their lines up (real interpreters started with ``python -c``; a cell's source
registered in ``linecache`` as IPython does).
"""

from __future__ import annotations

import linecache
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import traceback
import uuid
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import conveyor
from conveyor.errors import RemoteTraceback

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_a_function_defined_with_python_c_shows_its_source_line() -> None:
    code = textwrap.dedent("""\
        import logging, sys, traceback
        import conveyor
        def explode(x):
            raise ValueError(f"exploded on {x}")
        def logs(x):
            try:
                return 1 // x
            except ZeroDivisionError:
                logging.getLogger("cli").exception("logged on %d", x)
        logging.basicConfig(format="%(message)s")
        list(conveyor.map(logs, [0], backend="process", workers=1))
        try:
            list(conveyor.map(explode, [1], backend="process", workers=1))
        except ValueError as exc:
            traceback.print_exception(exc)
            sys.exit(0)
        sys.exit(1)
        """)
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert 'File "<string>", line 4, in explode\n    raise ValueError(f"exploded on {x}")\n' \
        in done.stderr, done.stderr
    assert 'File "<string>", line 7, in logs\n    return 1 // x\n' in done.stderr, done.stderr


def chained(key: str) -> None:
    empty: dict[str, int] = {}
    try:
        empty[key]
    except KeyError as exc:
        raise ValueError(f"no {key}") from exc


def test_a_chained_exception_reads_as_it_would_here() -> None:
    """The remote traceback is the text traceback.format_exception gives where the
    function runs in this process: both exceptions, their frames, the separator."""
    with pytest.raises(ValueError, match="no key") as local:
        chained("key")
    tb = local.value.__traceback__
    here = "".join(traceback.format_exception(local.type, local.value, tb and tb.tb_next))
    with pytest.raises(ValueError, match="no key") as info:
        list(conveyor.map(chained, ["key"], backend="process", workers=1))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert cause.tb == here
    assert "The above exception was the direct cause of the following exception" in here


if sys.version_info >= (3, 11):   # (exception groups are new in 3.11)
    def group(x: int) -> None:
        raise ExceptionGroup("several", [KeyError(x), ValueError(x)])  # noqa: F821

    def test_an_exception_group_keeps_its_nested_tracebacks() -> None:
        with pytest.raises(ExceptionGroup) as info:  # noqa: F821
            list(conveyor.map(group, [3], backend="process", workers=1))
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "ExceptionGroup: several (2 sub-exceptions)" in cause.tb, cause.tb
        assert "+---------------- 1 ----------------" in cause.tb, cause.tb
        assert 'raise ExceptionGroup("several", [KeyError(x), ValueError(x)])' in cause.tb


@pytest.mark.parametrize("filename", [
    "/tmp/ipykernel_4242/2718281828.py",   # IPython 8: a path that exists nowhere
    "<ipython-input-3-0123456789ab>",      # IPython 7
])
def test_source_only_in_the_parents_linecache_is_shown(
        filename: str, caplog: pytest.LogCaptureFixture) -> None:
    """As in a notebook: the cell's source is only in this process's linecache, the
    function travels by value; the traceback printed here shows its lines, and so does
    the one of a record the function logs with its exception."""
    name = f"conveyor_tests.cell.{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.ERROR, logger=name)
    source = textwrap.dedent(f"""\
        import logging

        def cell_function(x):
            try:
                return 10 // x
            except ZeroDivisionError:
                logging.getLogger({name!r}).exception("cell failed")
                raise
        """)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        namespace: dict[str, Any] = {"__name__": "a_notebook_cell"}   # not importable
        exec(compile(source, filename, "exec"), namespace)
        fn = namespace["cell_function"]
        assert cloudpickle.dumps(fn)   # by value, as a notebook's function goes
        with pytest.raises(ZeroDivisionError) as info:
            list(conveyor.map(fn, [5, 0], backend="process", workers=1))
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        expected = f'File "{filename}", line 5, in cell_function\n    return 10 // x\n'
        assert expected in str(cause), str(cause)
        [record] = [r for r in caplog.records if r.name == name]
        assert record.exc_text is not None
        assert expected in record.exc_text, record.exc_text
    finally:
        del linecache.cache[filename]
    # Formatted once: it pickles (and reads) as the text it showed.
    again = pickle.loads(pickle.dumps(cause))
    assert isinstance(again, RemoteTraceback)
    assert again.tb == cause.tb
    assert again.args == cause.args == (cause.tb,)
    assert repr(again) == f"RemoteTraceback({cause.tb!r})"
