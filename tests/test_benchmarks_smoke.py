"""Smoke test of ``benchmarks/``: the quick run works and measures conveyor's rows.

It runs the tables the way a developer (or CI) does, in a subprocess from
the project root, and checks the Markdown they print: every conveyor row has
a number, none says ERROR; the failure table's conveyor rows saw the error
they should, with every good result. A second test hides the peer libraries
(as in CI, which installs only the test extras) and checks their rows say
"not installed" instead of crashing the table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import HAS_DASK

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
PEERS = ("joblib", "loky", "mpire", "pebble", "aiometer", "anyio", "dask", "distributed",
         "pypeln")
NUMBER = re.compile(r"\d")

# Installed into a child interpreter through PYTHONPATH: makes the peers unimportable.
BLOCKER = """
import importlib.abc
import sys

BLOCKED = {blocked!r}


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)")
        return None


sys.meta_path.insert(0, _Block())
"""


def run(args: list[str], *, timeout: float, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def tables(markdown: str) -> dict[str, list[list[str]]]:
    """Table title -> its rows (cells stripped), header and separator lines excluded."""
    out: dict[str, list[list[str]]] = {}
    title = ""
    for line in markdown.splitlines():
        if line.startswith("### "):
            title = line[4:]
            out[title] = []
        elif title and line.startswith("|") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if cells[0] != "group":
                out[title].append(cells)
    return out


def conveyor_rows(rows: list[list[str]]) -> list[list[str]]:
    return [r for r in rows if r[1].startswith("conveyor")]


def table(found: dict[str, list[list[str]]], prefix: str) -> list[list[str]]:
    return next(rows for title, rows in found.items() if title.startswith(prefix))


@pytest.mark.timeout(180)
def test_quick_run_all_measures_every_conveyor_row() -> None:
    proc = run([str(BENCH / "run_all.py"), "--quick", "--no-readme"], timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = tables(proc.stdout)
    titles = sorted(found)
    assert len(titles) == 6, titles
    for prefix in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 5", "Table 6"):
        assert any(t.startswith(prefix) for t in titles), (prefix, titles)
    for title, rows in found.items():
        mine = conveyor_rows(rows)
        assert len(mine) >= 3, (title, rows)
        for row in mine:
            text = " | ".join(row)
            if "dask" in row[1] and not HAS_DASK:   # measured where dask is installed
                assert "| not installed (distributed" in text, text
                continue
            assert "ERROR" not in text, (title, text)
            assert "not available" not in text, (title, text)
            # the first measured column: µs/task (Table 1b: ms), A warm, speedup cold,
            # wall time, or when the failure surfaced
            assert NUMBER.search(row[3]), (title, text)
    # the process backend's rows are there, in every table that has them
    for prefix in ("Table 1", "Table 3", "Table 4", "Table 5", "Table 6"):
        assert any("process" in r[1] for r in conveyor_rows(table(found, prefix))), prefix
    # Table 5: each conveyor scenario saw its failure and kept the good results
    for row in conveyor_rows(table(found, "Table 5")):
        text = " | ".join(row)
        assert "WorkerCrashed" in row[2] or "TimeoutError" in row[2] \
            or "TaskTimeout" in row[2], text
        expected = "3/7" if "raised" in row[2] else "7/7"
        assert row[4] == expected, text
        assert row[6].startswith("exits rc=0"), text
        assert row[7] == "0", text
    assert "left unchanged" in proc.stderr  # a smoke run never rewrites README/results


@pytest.mark.parametrize("name", ["cpu_speedup.py", "failure_behaviour.py",
                                  "pipeline_makespan.py"])
@pytest.mark.timeout(120)
def test_new_tables_run_alone_with_a_row_filter(name: str) -> None:
    proc = run([str(BENCH / name), "--quick", "--rows", "conveyor"], timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = next(iter(tables(proc.stdout).values()))
    assert rows, proc.stdout
    assert all(r[1].startswith(("conveyor", "sequential")) for r in rows), rows
    assert len(conveyor_rows(rows)) >= 3, rows


def test_run_all_knows_every_table() -> None:
    proc = run([str(BENCH / "run_all.py"), "--only", "nope"], timeout=30)
    assert proc.returncode != 0
    for name in ("overhead", "sleep", "cpu", "memory", "failure", "pipeline"):
        assert name in proc.stderr, proc.stderr


@pytest.mark.timeout(120)
def test_missing_peers_give_not_installed_rows(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(PEERS)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = run([str(BENCH / "overhead.py"), "--quick"], timeout=110, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = next(iter(tables(proc.stdout).values()))
    peer_rows = [r for r in rows if r[1].startswith(PEERS)]
    assert len(peer_rows) >= 5, rows
    for row in peer_rows:
        assert row[3].startswith("not installed"), row
    for row in conveyor_rows(rows):
        if "dask" in row[1]:   # conveyor's dask rows need dask too
            assert row[3].startswith("not installed"), row
        else:
            assert NUMBER.search(row[3]) and "ERROR" not in row[3], row
