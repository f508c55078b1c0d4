"""Smoke test of ``benchmarks/``: the quick run works and measures conveyor's rows.

It runs the tables the way a developer (or CI) does, in a subprocess from
the project root, and checks the Markdown they print: every conveyor row has
a number, none says ERROR; the failure table's conveyor rows saw the error
they should, with every good result. A second test hides the peer libraries
(as in CI, which installs only the test extras) and checks their rows say
"not installed" instead of crashing the table. The README's headline rows are
derived from measured tables by ``benchmarks/headline.py``: the last tests
feed it tables of known numbers.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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
    # Only conveyor's rows (and the baselines they are measured against): what
    # is asserted below. The peers' rows run in the full benchmark run. Table 7
    # (scale) has a smoke test of its own below.
    proc = run([str(BENCH / "run_all.py"), "--quick", "--no-readme", "--rows", "conveyor",
                "--only", "overhead,sleep,cpu,memory,failure,pipeline"], timeout=170)
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
    assert "left unchanged" in proc.stderr  # a smoke run never rewrites README/the page


# One script on its own (run_all.py above passes the row filter to every table).
@pytest.mark.parametrize("name", ["pipeline_makespan.py"])
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
    for name in ("overhead", "sleep", "cpu", "memory", "failure", "pipeline", "scale"):
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


def number(cell: str) -> float:
    return float(cell.split(" ")[0].replace(",", ""))


# Table 7 at its smoke sizes (a few seconds): every measurement in a child of
# its own, conveyor's rows beside the hand-written reference of the same run.
@pytest.mark.timeout(60)
def test_scale_table_sets_conveyor_beside_hand_written() -> None:
    proc = run([str(BENCH / "scale.py"), "--quick"], timeout=50)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = tables(proc.stdout)
    assert "ERROR" not in proc.stdout, proc.stdout
    groups: dict[str, list[list[str]]] = {}
    for row in table(found, "Table 7 -"):
        groups.setdefault(row[0], []).append(row)
    assert sorted(groups) == ["A", "B", "C"], groups
    for key, rows in groups.items():
        reference = [r for r in rows if r[1].startswith("hand-written")]
        assert len(reference) == 1 and reference[0][5] == "1.000", rows
        mine = conveyor_rows(rows)
        assert len(mine) == (1 if key == "C" else 2), rows   # C: the warm Pool only
        for row in mine + reference:
            # sleeps take their time: no system beats ceil(n / k) sleeps in a row
            assert number(row[4]) >= 0.99, row
            assert number(row[5]) > 0 and NUMBER.search(row[6]), row
        assert all(r[7] == "not judged (--quick)" for r in mine), mine
    cost = table(found, "Table 7b")
    assert {r[0] for r in cost} == {"thread", "asyncio", "process", "dask"}, cost
    for row in cost:
        if row[0] == "dask":   # a LocalCluster per size: the full run measures it
            assert row[2] in ("skipped by --quick", "not installed (distributed)"), row
            continue
        # µs/item at both sizes, their ratio, the RSS growth at both sizes
        assert len(row) == 7 and all(NUMBER.match(c) for c in row[2:]), row
        # the ratio of the two costs (the cells are rounded: "0.009" for 0.0094)
        assert number(row[4]) == pytest.approx(number(row[3]) / number(row[2]), rel=0.05,
                                               abs=0.001), row


def load_headline(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))   # headline.py imports _harness beside it
    spec = importlib.util.spec_from_file_location("_bench_headline", BENCH / "headline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)   # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


# Two measured tables in run_all.py's format; the numbers are made up, and the
# headlines that read other tables must say "not measured".
TABLES = """
### Table 1 - per-task overhead, f(x) = x + 1 (µs/task; lower is better)

| group    | system                                         | µs/task (median)       |
|----------|------------------------------------------------|------------------------|
| baseline | sequential list(map(f, xs))                    | 0.01                   |
| threads  | ThreadPoolExecutor(4).map                      | 12.5                   |
| threads  | joblib Parallel(n_jobs=2, backend='threading') | not installed (joblib) |
| threads  | peer \\| with a pipe                            | 2.50 (2.0-3.0)         |
| threads  | conveyor.Pool(workers=4).map(inc, xs) [warm]   | 0.50                   |
| asyncio  | asyncio create_task per item + gather          | 0.25                   |
| asyncio  | conveyor.Pool(backend='asyncio', workers=100).map(ainc, xs) [warm] | 1,000 |

#### Table 1b - cold start of a 2-worker process pool (ms; lower is better)

| group     | system                                                          | ms  |
|-----------|-----------------------------------------------------------------|-----|
| processes | conveyor.Pool(backend='process', workers=2).map(inc, xs) [warm] | 1.0 |

### Table 3 - CPU-bound speedup over sequential, 2 workers (higher is better)

| group     | system                                          | speedup warm | speedup cold |
|-----------|-------------------------------------------------|--------------|--------------|
| processes | ProcessPoolExecutor(2).map chunksize=1          | 1.60         | 1.50         |
| processes | multiprocessing.Pool(2).map (auto chunksize=5)  | 1.80         | 1.70         |
| processes | conveyor.Pool(backend='process', workers=2).map | 1.90 (5%)    | 1.54         |
"""


def test_headline_sets_conveyor_beside_the_best_measured_peer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    headline = load_headline(monkeypatch)
    tables = headline.parse_tables(TABLES)
    # each headline by the conveyor row it reads
    rows = {h.conveyor: headline.headline_row(tables, h) for h in headline.HEADLINES}
    threads = rows["conveyor.Pool(workers=4).map(inc, xs) [warm]"]
    # the best peer is the lowest figure of the group (not the "not installed"
    # row, not the baseline group), here one whose name holds an escaped pipe
    assert threads[0].startswith("Table 1: "), threads
    assert threads[1:] == ["0.50", "2.50: peer | with a pipe", "**5.00x better**"], threads
    # conveyor behind its peer: the ratio says so; thousands separators are read
    asyncio_row = rows["conveyor.Pool(backend='asyncio', workers=100).map(ainc, xs) [warm]"]
    assert asyncio_row[1:] == ["1,000", "0.25: asyncio create_task per item + gather",
                               "4,000x worse"], asyncio_row
    # higher is better: 1.90 against the best peer's 1.80
    cpu = rows["conveyor.Pool(backend='process', workers=2).map"]
    assert cpu[0].startswith("Table 3: "), cpu
    assert cpu[1:] == ["1.90", "1.80: multiprocessing.Pool(2).map (auto chunksize=5)",
                       "**1.06x better**"], cpu
    # Table 1 holds no process row (Table 1b's does not count), and the other
    # tables were not measured: no figure is made up for them
    assert rows["conveyor.Pool(backend='process', workers=2).map(inc, xs) [warm]"][1:] == [
        "not measured", "", ""]
    unmeasured = [r for r in rows.values() if r[1] == "not measured"]
    assert len(unmeasured) == len(headline.HEADLINES) - 3, rows


def test_headline_compare_words(monkeypatch: pytest.MonkeyPatch) -> None:
    compare = load_headline(monkeypatch).compare
    assert compare(2.0, 2.0, True) == "the same"
    assert compare(1.0, 1.5, True) == "**1.50x better**"
    assert compare(1.0, 1.5, False) == "1.50x worse"
    assert compare(0.0, 1.5, True) == "-"   # no ratio with a zero
