"""Run every benchmark table and publish the Markdown.

Each table runs as its own script in a fresh interpreter (``python
benchmarks/<table>.py``), so one table's leftovers (helper threads, cached
worker processes) cannot skew the next; inside a table every row is measured
in that one process run (Table 4: one parent, one fresh child per row).

Output
    * stdout: all tables, as Markdown;
    * ``docs/benchmarks.md``: the documentation's page of full tables, between
      ``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->`` (the page
      around them is rewritten too);
    * ``README.md``: the headline rows (``headline.py`` derives them from the
      measured rows), between ``<!-- headline:start -->`` and
      ``<!-- headline:end -->`` (the README is never created or otherwise
      rewritten; without the markers it is left alone).

    Each table sits between its own ``<!-- table:NAME:start/end -->`` markers,
    so ``--only`` refreshes one table and keeps the others. A ``--quick``
    smoke run leaves both files alone (``--output FILE`` saves its tables).
    ``--render`` measures nothing: it rebuilds the page and the README's
    headline from the tables already stored in the page.

Run (from the project root)
    python benchmarks/run_all.py                  # full run (~25-30 min on 2 cores)
    python benchmarks/run_all.py --quick --no-readme   # smoke run (CI), ~1 min
    python benchmarks/run_all.py --only overhead  # one table: overhead|sleep|cpu|memory|
                                                  # failure|pipeline|scale (or 1-7);
                                                  # repeatable, or comma-separated
    python benchmarks/run_all.py --render         # re-render from docs/benchmarks.md
    python benchmarks/run_all.py --render --check # exit 1 if that would change a file
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import collections
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass

import headline
from _harness import BENCH_DIR, ROOT, command_line, now

START = "<!-- benchmarks:start -->"
END = "<!-- benchmarks:end -->"
HEAD_START = "<!-- headline:start -->"
HEAD_END = "<!-- headline:end -->"
README = ROOT / "README.md"
PAGE = ROOT / "docs" / "benchmarks.md"
REGENERATE = '.venv/bin/pip install -e ".[bench]" && .venv/bin/python benchmarks/run_all.py'
PAGE_INTRO = f"""# Benchmarks

conveyor beside the standard library and the peer libraries, measured **in one
run** on the same workloads. Ratios between rows, not absolute times, are what
hold on a shared machine: every table's header says when, where and on what it
was measured. The README shows eight headline rows taken from these tables.

Regenerate every table (this page and the README's headline) with:

    {REGENERATE}

`--only TABLE` re-measures one table and keeps the others; `--render` rebuilds
this page and the README's headline from the tables stored here, measuring
nothing. This page is generated: edit `benchmarks/run_all.py`, not the page.

Table 7 (scale) sets conveyor's asyncio runs at thousands of workers beside
hand-written worker coroutines, and the per-item cost of every backend from
10^4 to 10^7 items; each of its runs is a fresh process of its own.
Re-measure it alone with `.venv/bin/python benchmarks/run_all.py --only scale`
(4 to 8 minutes on 2 cores).
"""


@dataclass(frozen=True)
class Table:
    name: str
    script: str
    aliases: tuple[str, ...]

    def command(self, extra: list[str]) -> list[str]:
        return [sys.executable, str(BENCH_DIR / self.script), *extra]


TABLES = [
    Table("overhead", "overhead.py", ("1", "table1", "overhead.py")),
    Table("sleep", "sleep_makespan.py", ("2", "table2", "sleep_makespan", "sleep_makespan.py")),
    Table("cpu", "cpu_speedup.py", ("3", "table3", "cpu_speedup", "cpu_speedup.py")),
    Table("memory", "memory_lazy_input.py",
          ("4", "table4", "memory_lazy_input", "memory_lazy_input.py")),
    Table("failure", "failure_behaviour.py",
          ("5", "table5", "failure_behaviour", "failure_behaviour.py")),
    Table("pipeline", "pipeline_makespan.py",
          ("6", "table6", "pipeline_makespan", "pipeline_makespan.py")),
    Table("scale", "scale.py", ("7", "table7", "scale.py")),
]


def resolve(names: list[str]) -> list[Table]:
    wanted: set[str] = set()
    for item in names:
        for name in filter(None, (s.strip().lower() for s in item.split(","))):
            match = [t for t in TABLES if name == t.name or name in t.aliases]
            if not match:
                choices = ", ".join(f"{t.name} ({'/'.join(t.aliases[:2])})" for t in TABLES)
                raise SystemExit(f"run_all.py: unknown table {name!r}; choose from {choices}")
            wanted.add(match[0].name)
    return [t for t in TABLES if not wanted or t.name in wanted]


def section(name: str, body: str) -> str:
    return f"<!-- table:{name}:start -->\n{body.strip()}\n<!-- table:{name}:end -->"


def parse_sections(block: str) -> dict[str, str]:
    found = re.finditer(r"<!-- table:(\w+):start -->\n?(.*?)\n?<!-- table:\1:end -->",
                        block, flags=re.S)
    return {m.group(1): m.group(2) for m in found}


def between_markers(text: str, start: str = START, end: str = END) -> tuple[int, int] | None:
    """(start, end) offsets of what lies between the markers, or None if absent."""
    i = text.find(start)
    if i < 0:
        return None
    j = text.find(end, i + len(start))
    if j < 0:
        return None
    return i + len(start), j


def unmeasured(table: Table) -> str:
    """The page's section for a table it holds no measurement of (a new table)."""
    return (f"### Table {table.aliases[0]} - {table.name}: not measured yet\n\n"
            f"_This page holds no run of `benchmarks/{table.script}` yet: measure it with "
            f"`.venv/bin/python benchmarks/run_all.py --only {table.name}` from the project "
            "root._")


def build_block(new: dict[str, str], old_block: str, summary: str, *,
                placeholders: bool = False) -> str:
    """The text to put between the markers: new sections, plus kept old ones
    (``placeholders``: and a "not measured yet" section for every other table)."""
    old = parse_sections(old_block)
    parts = [summary]
    for t in TABLES:
        body = new.get(t.name, old.get(t.name))
        if body is None and placeholders:
            body = unmeasured(t)
        if body is not None:
            parts.append(section(t.name, body))
    return "\n\n" + "\n\n".join(parts) + "\n\n"


def replace_between(text: str, block: str, start: str = START, end: str = END) -> str | None:
    span = between_markers(text, start, end)
    if span is None:
        return None
    return text[:span[0]] + block + text[span[1]:]


def stored_block(path: Path) -> str:
    """What lies between the benchmark markers of ``path`` ("" without them)."""
    text = path.read_text() if path.exists() else ""
    span = between_markers(text)
    return text[span[0]:span[1]] if span else ""


def stored_summary(block: str) -> str:
    """The summary line of a stored block: what comes before its first table."""
    return block.split("<!-- table:", 1)[0].strip()


def page_text(block: str) -> str:
    return f"{PAGE_INTRO}\n{START}{block}{END}\n"


def readme_text(readme: str, block: str) -> str | None:
    """The README with its headline re-derived from ``block``; None without markers."""
    link = PAGE.relative_to(ROOT).as_posix()
    return replace_between(readme, f"\n{headline.render(block, link)}\n", HEAD_START, HEAD_END)


def run_table(table: Table, extra: list[str], timeout: float | None) -> tuple[int, str, str]:
    """Run one table's script; stream its progress; return (rc, stdout, stderr tail)."""
    cmd = table.command(extra)
    print(f"\n== {table.name}: {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr,
          flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    tail: collections.deque[str] = collections.deque(maxlen=15)
    chunks: list[str] = []

    def pump_stderr() -> None:  # progress: shown live, the last lines kept for errors
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip())
            sys.stderr.write(line)
            sys.stderr.flush()

    def read_stdout() -> None:  # the Markdown
        assert proc.stdout is not None
        chunks.append(proc.stdout.read())

    readers = [threading.Thread(target=f, daemon=True) for f in (pump_stderr, read_stdout)]
    for r in readers:
        r.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # lets Table 4 kill its own children first
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        rc = -abs(proc.wait())
        tail.append(f"run_all.py: killed after {timeout:g} s")
    for r in readers:
        r.join(10)
    return rc, "".join(chunks), "\n".join(tail)


def publish(block: str, *, readme: bool, check: bool = False) -> list[str]:
    """Write the page and (``readme``) the README's headline from ``block``.

    Returns the files that changed (with ``check``: that would change; nothing
    is written)."""
    changed: list[str] = []
    page = page_text(block)
    if not PAGE.exists() or PAGE.read_text() != page:
        changed.append(str(PAGE.relative_to(ROOT)))
        if not check:
            PAGE.parent.mkdir(exist_ok=True)
            PAGE.write_text(page)
    if not readme:
        return changed
    if not README.exists():
        print(f"run_all.py: {README} does not exist; not creating it.", file=sys.stderr)
        return changed
    text = README.read_text()
    updated = readme_text(text, block)
    if updated is None:
        print(f"run_all.py: {README.name} has no `{HEAD_START}` ... `{HEAD_END}` markers; "
              "add them where the headline belongs and re-run.", file=sys.stderr)
        if check:   # a README without its headline is out of date too
            changed.append(README.name)
    elif updated != text:
        changed.append(README.name)
        if not check:
            README.write_text(updated)
    return changed


def write_outputs(new: dict[str, str], summary: str, *, readme: bool,
                  output: Path | None, page: bool) -> None:
    if output is not None:
        span_text = output.read_text() if output.exists() else ""
        span = between_markers(span_text)
        block = build_block(new, span_text[span[0]:span[1]] if span else "", summary)
        output.write_text(f"# conveyor benchmark results\n\n{START}{block}{END}\n")
        print(f"run_all.py: wrote {output}", file=sys.stderr)
    if not page:
        return
    block = build_block(new, stored_block(PAGE), summary, placeholders=True)
    for name in publish(block, readme=readme):
        print(f"run_all.py: updated {name}", file=sys.stderr)


def render(*, readme: bool, check: bool) -> int:
    """``--render``: the page and the headline again from the stored tables."""
    stored = stored_block(PAGE)
    if not parse_sections(stored):
        print(f"run_all.py: {PAGE.relative_to(ROOT)} holds no tables to render; run the "
              "benchmarks first.", file=sys.stderr)
        return 1
    block = build_block({}, stored, stored_summary(stored), placeholders=True)
    changed = publish(block, readme=readme, check=check)
    verb = "out of date" if check else "updated"
    for name in changed:
        print(f"run_all.py: {verb}: {name}", file=sys.stderr)
    if not changed:
        print("run_all.py: up to date", file=sys.stderr)
    return 1 if check and changed else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: small N, 1 repeat, expensive peer rows skipped (CI)")
    ap.add_argument("--only", action="append", default=[], metavar="TABLE",
                    help="run only this table: overhead|sleep|cpu|memory|failure|pipeline|"
                         "scale (or 1-7); repeatable, or comma-separated")
    ap.add_argument("--no-readme", action="store_true",
                    help="do not touch README.md")
    ap.add_argument("--output", type=Path, default=None,
                    help="also save the tables of this run here (a --quick run saves "
                         f"nothing else; a full run writes {PAGE.relative_to(ROOT)})")
    ap.add_argument("--render", action="store_true",
                    help=f"measure nothing: rebuild {PAGE.relative_to(ROOT)} and the README's "
                         "headline from the tables stored in that page")
    ap.add_argument("--check", action="store_true",
                    help="with --render: write nothing, exit 1 if a file is out of date")
    ap.add_argument("--rows", default="", help="passed to every table: row filter")
    ap.add_argument("--table-timeout", type=float, default=None,
                    help="kill a table's script after this many seconds "
                         "(default: none; 150 with --quick)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check and not args.render:
        raise SystemExit("run_all.py: --check goes with --render")
    if args.render:
        return render(readme=not args.no_readme, check=args.check)
    tables = resolve(args.only)
    extra = (["--quick"] if args.quick else []) + (["--rows", args.rows] if args.rows else [])
    timeout = args.table_timeout if args.table_timeout is not None else (
        150.0 if args.quick else None)
    started = time.perf_counter()
    new: dict[str, str] = {}
    failed: list[str] = []
    for table in tables:
        rc, out, tail = run_table(table, extra, timeout)
        if rc != 0:
            failed.append(table.name)
            out = (out.strip() + "\n\n" if out.strip() else "") + (
                f"**{table.script} failed (exit {rc})**; last lines of its stderr:\n\n"
                "```\n" + tail + "\n```\n")
        new[table.name] = out
    took = time.perf_counter() - started
    kind = "quick smoke run (NOT representative)" if args.quick else "full run"
    names = ", ".join(t.name for t in tables)
    scope = (f"{len(tables)} table(s) in {took / 60:.1f} min" if len(tables) == len(TABLES)
             else f"refreshed {names} in {took / 60:.1f} min; every table's header gives the "
                  "date and revision it was measured at")
    summary = (f"_Generated by `{command_line()}` ({kind}) on {now()}; {scope}. Regenerate "
               "every table with `.venv/bin/python benchmarks/run_all.py` from the project "
               "root._")
    print(summary + "\n")
    for t in tables:
        print(new[t.name].strip() + "\n")
    readme = not args.no_readme
    if args.quick:
        print(f"run_all.py: --quick: README.md and {PAGE.relative_to(ROOT)} left unchanged "
              "(smoke numbers; pass --output FILE to save them).", file=sys.stderr)
    write_outputs(new, summary, readme=readme, output=args.output, page=not args.quick)
    print(f"run_all.py: {len(tables)} table(s) in {took:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
