"""Smoke test of ``benchmarks/``: the quick run works and measures conveyor's rows.

It runs the tables the way a developer (or CI) does, in a subprocess from
the project root, and checks the Markdown they print: every conveyor row has
a number, none says ERROR. A second test hides the peer libraries (as in CI,
which installs only the test extras) and checks their rows say "not
installed" instead of crashing the table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
PEERS = ("joblib", "loky", "mpire", "pebble", "aiometer", "anyio", "dask", "distributed")
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


@pytest.mark.timeout(180)
def test_quick_run_all_measures_every_conveyor_row() -> None:
    proc = run([str(BENCH / "run_all.py"), "--quick", "--no-readme"], timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = tables(proc.stdout)
    titles = sorted(found)
    assert len(titles) == 3, titles
    for prefix in ("Table 1", "Table 2", "Table 4"):
        assert any(t.startswith(prefix) for t in titles), (prefix, titles)
    for title, rows in found.items():
        mine = conveyor_rows(rows)
        assert len(mine) >= 3, (title, rows)
        for row in mine:
            text = " | ".join(row)
            assert "ERROR" not in text, (title, text)
            assert "not available" not in text, (title, text)
            # the first measured column: µs/task, A warm, or wall time
            assert NUMBER.search(row[3]), (title, text)
    assert "left unchanged" in proc.stderr  # a smoke run never rewrites README/results


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
        assert NUMBER.search(row[3]) and "ERROR" not in row[3], row
