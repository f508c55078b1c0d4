"""The README's headline rows, derived from the measured tables (nothing is measured here).

Each :class:`Headline` names one measured row of conveyor's and the rows of
the peers it is set beside; :func:`render` reads their cells out of the
tables' Markdown (as ``run_all.py`` stores them in ``docs/benchmarks.md``)
and prints conveyor's figure, the best peer's and the ratio between them.
No number is written by hand: a row that a table did not measure (a peer not
installed, a failed table) says so instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from _harness import md_table

_NUMBER = re.compile(r"^-?\d[\d,]*(?:\.\d+)?")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_META = {
    "date": re.compile(r"^- date: (\d{4}-\d\d-\d\d)\S*; conveyor revision (\S+)", re.M),
    "python": re.compile(r"^- (Python \S+) \(", re.M),
    "cpus": re.compile(r"os\.cpu_count\(\)=(\d+)"),
}


@dataclass(frozen=True)
class Table:
    """One measured Markdown table: its heading, then each row as {column: cell}."""

    heading: str
    rows: tuple[dict[str, str], ...]


def parse_tables(markdown: str) -> list[Table]:
    """Every table in ``markdown``, under the heading (``#`` line) above it."""
    tables: list[Table] = []
    heading = ""
    header: list[str] | None = None
    rows: list[dict[str, str]] = []

    def flush() -> None:
        nonlocal header, rows
        if header is not None:
            tables.append(Table(heading, tuple(rows)))
        header, rows = None, []

    for line in markdown.splitlines():
        if line.startswith("#"):
            flush()
            heading = line.lstrip("#").strip()
        elif line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(line.strip())[1:-1]]
            if header is None:
                header = cells
            elif not set(line) <= set("|-: "):   # not the separator line
                rows.append(dict(zip(header, cells, strict=False)))   # a short row: its cells
        else:
            flush()
    flush()
    return tables


def number(cell: str | None) -> float | None:
    """The figure a cell starts with ("1,589", "1.10 (1.09-1.25)"), or None ("n/a", "-")."""
    match = _NUMBER.match(cell or "")
    return float(match.group().replace(",", "")) if match else None


@dataclass(frozen=True)
class Headline:
    """One headline: a conveyor row of a table beside the best of its peers."""

    label: str                 # what is measured, as the README shows it
    table: str                 # the table's heading starts with this ("Table 1 -")
    column: str                # the column holding the figure
    conveyor: str              # conveyor's row: its "system" (or "approach") cell
    peers: Callable[[dict[str, str]], bool]   # which other rows compete
    lower_is_better: bool = True


def _group(*names: str) -> Callable[[dict[str, str]], bool]:
    return lambda row: row.get("group") in names


HEADLINES: tuple[Headline, ...] = (
    Headline("per-task overhead, threads: warm `Pool.map` of `x + 1` (µs/task)",
             "Table 1 -", "µs/task (median)",
             "conveyor.Pool(workers=4).map(inc, xs) [warm]", _group("threads")),
    Headline("per-task overhead, asyncio: warm `Pool.map` (µs/task)",
             "Table 1 -", "µs/task (median)",
             "conveyor.Pool(backend='asyncio', workers=100).map(ainc, xs) [warm]",
             _group("asyncio")),
    Headline("per-task overhead, 2 processes: warm `Pool.map` (µs/task)",
             "Table 1 -", "µs/task (median)",
             "conveyor.Pool(backend='process', workers=2).map(inc, xs) [warm]",
             _group("processes")),
    Headline("per-task overhead, dask LocalCluster of 2 (µs/task)",
             "Table 1 -", "µs/task (median)",
             "conveyor.Pool(backend='dask', cluster=client).map on the same LocalCluster [warm]",
             _group("cluster")),
    Headline("2,000 sleeps of 50 ms on 500 threads: makespan / ideal",
             "Table 2 -", "B warm",
             "conveyor thread: Pool(workers=k).map warm / conveyor.map cold", _group("threads")),
    Headline("CPU-bound speedup, 2 processes, warm pool (higher is better)",
             "Table 3 -", "speedup warm",
             "conveyor.Pool(backend='process', workers=2).map", _group("processes"),
             lower_is_better=False),
    Headline("memory growth mapping a lazy generator, 2 processes (MiB)",
             "Table 4 -", "growth MiB",
             "conveyor.Pool(backend='process', workers=2).map(inc, gen)", _group("processes")),
    Headline("three-stage pipeline (threads -> processes -> threads): makespan / ideal",
             "Table 6 -", "makespan / ideal",
             "conveyor.stream: threads -> process -> threads",
             _group("hand-written", "library")),
)


def _system(row: dict[str, str]) -> str:
    return row.get("system", row.get("approach", ""))


def _find(tables: Sequence[Table], prefix: str) -> Table | None:
    return next((t for t in tables if t.heading.startswith(prefix)), None)


def _times(a: float, b: float) -> str:
    x = max(a, b) / min(a, b)
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x" if x < 100 else f"{x:,.0f}x"


def compare(mine: float, peer: float, lower_is_better: bool) -> str:
    """How conveyor's figure stands beside the peer's, in words a reader can check."""
    if mine == peer:
        return "the same"
    if mine <= 0 or peer <= 0:
        return "-"
    better = (mine < peer) == lower_is_better
    return f"**{_times(mine, peer)} better**" if better else f"{_times(mine, peer)} worse"


def headline_row(tables: Sequence[Table], h: Headline) -> list[str]:
    table = _find(tables, h.table)
    if table is None:
        return [h.label, "not measured", "", ""]
    mine_row = next((r for r in table.rows if _system(r) == h.conveyor), None)
    mine = number(mine_row.get(h.column)) if mine_row else None
    scored = [(v, _system(r)) for r in table.rows
              if h.peers(r) and not _system(r).startswith("conveyor")
              and (v := number(r.get(h.column))) is not None]
    label = f"{table.heading.split(' -')[0]}: {h.label}"
    if mine is None or mine_row is None:
        return [label, "not measured", "", ""]
    if not scored:
        return [label, mine_row[h.column].split(" ")[0], "no peer measured", ""]
    best = min(scored) if h.lower_is_better else max(scored)
    peer_cell = next(r[h.column] for r in table.rows if _system(r) == best[1])
    return [label, mine_row[h.column].split(" ")[0],
            f"{peer_cell.split(' ')[0]}: {best[1]}", compare(mine, best[0], h.lower_is_better)]


def measured_on(markdown: str) -> str:
    """'2026-11-25, conveyor 6471b79, Python 3.11.7, 2 CPUs', from the tables' headers."""
    parts = []
    if m := _META["date"].search(markdown):
        parts += [m.group(1), f"conveyor revision {m.group(2)}"]
    if m := _META["python"].search(markdown):
        parts.append(m.group(1))
    if m := _META["cpus"].search(markdown):
        parts.append(f"{m.group(1)} CPUs")
    return ", ".join(parts) or "no header found"


def render(markdown: str, link: str) -> str:
    """The headline block: the table, then where it comes from (``link``: the full tables)."""
    tables = parse_tables(markdown)
    rows = [headline_row(tables, h) for h in HEADLINES]
    table = md_table(["measure (lower is better unless said)", "conveyor", "best peer",
                      "conveyor vs best peer"], rows)
    return (f"{table}\n\nDerived by `benchmarks/run_all.py` from the measured rows of "
            f"[the full tables]({link}) ({measured_on(markdown)}); the best peer is the "
            "best other row of the same group of that table (the standard library, the "
            "peer libraries, hand-written versions).")
