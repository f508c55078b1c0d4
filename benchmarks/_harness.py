"""Measurement helpers shared by conveyor's benchmark tables (nothing here is measured).

* timing (:func:`timed`) and summaries (:class:`Stats`: median, min, max,
  spread = (max - min) / median);
* :class:`Case`: one row of a table, with what it needs to run (peer modules,
  a conveyor backend) so that a missing peer yields a "not installed" row
  instead of a crash, and ``--quick`` can skip the expensive rows;
* Markdown output (:func:`md_table`) and the environment header every table
  starts with (date, machine, Python, CPUs, load average, library versions,
  the command that produced it), so a number is never read without the state
  of the machine it was taken on;
* small helpers for the peers (joblib/loky reusable executors, dask logs).

The processes a table's child started (Tables 4 and 5) are watched by
``_children.py``.

Every table runs all of its rows in ONE process run (Tables 4 and 5: one
parent, one fresh child per row), so ratios between rows hold on a noisy machine.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.metadata as metadata
import importlib.util
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

# Run from a checkout without installing: fall back to the src layout.
if importlib.util.find_spec("conveyor") is None:  # pragma: no cover - depends on the venv
    sys.path.insert(0, str(ROOT / "src"))

T = TypeVar("T")

#: Libraries whose versions every header records.
LIBRARIES = (
    "conveyor", "joblib", "loky", "mpire", "pebble", "aiometer", "anyio", "dask",
    "distributed", "pypeln", "cloudpickle", "psutil",
)
#: pip spec of the peers (the ``bench`` extra), quoted in "not installed" notes.
BENCH_INSTALL = 'pip install -e ".[bench]"'
MiB = 1024 * 1024


# ---------------------------------------------------------------------------
# Statistics and timing
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Stats:
    """Repeated measurements of one quantity."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Iterable[float]) -> Stats:
        values = tuple(samples)
        if not values:
            raise ValueError("Stats needs at least one sample")
        return cls(values)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative noise between repeats."""
        m = self.median
        return (self.max - self.min) / m if m else 0.0

    def scaled(self, factor: float) -> Stats:
        return Stats(tuple(s * factor for s in self.samples))


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall time of ``fn()`` (perf_counter) and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------

def missing_modules(names: Iterable[str]) -> list[str]:
    """The modules among ``names`` that cannot be imported here (without importing them)."""
    out = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


@functools.cache
def conveyor_has_backend(name: str) -> bool:
    """Whether this conveyor knows ``backend=name`` (asked through the public API)."""
    import conveyor

    if name == "dask":   # a Pool would start a cluster: ask the registry instead
        from conveyor._backends import known

        return known(name)
    try:
        pool = conveyor.Pool(backend=name, workers=1)
    except ValueError:  # "unknown backend ..."
        return False
    pool.close()
    return True


@dataclass(frozen=True, kw_only=True)
class Case:
    """One row of a table.

    ``requires``: importable modules the row needs (peers); ``backend``: the
    conveyor backend it needs (rows for backends a given conveyor version lacks
    say so instead of failing); ``expensive``: skipped by ``--quick`` (cluster
    start-up, dozens of processes, very long inputs); ``target``: the figure a
    conveyor row must not exceed, shown with a verdict.
    """

    group: str
    label: str
    requires: tuple[str, ...] = ()
    backend: str | None = None
    expensive: bool = False
    target: float | None = None

    @property
    def is_conveyor(self) -> bool:
        return self.label.startswith("conveyor")

    def skip_reason(self, quick: bool) -> str | None:
        gone = missing_modules(self.requires)
        if gone:
            return f"not installed ({', '.join(gone)}; `{BENCH_INSTALL}`)"
        if self.backend is not None and not conveyor_has_backend(self.backend):
            return f"not available: this conveyor has no {self.backend!r} backend"
        if quick and self.expensive:
            return "skipped by --quick"
        return None

    def selected(self, pattern: str) -> bool:
        return not pattern or pattern.lower() in f"{self.group} {self.label}".lower()


def verdict(value: float | None, target: float | None, unit: str = "", *,
            quick: bool = False, at_least: bool = False) -> str:
    """'<= 1.05: met' / '<= 1.05: MISSED' for a conveyor row; '' without a target.

    ``at_least``: the target is a floor ('>= 1.95', e.g. a speedup), not a ceiling.
    A ``--quick`` smoke run is too small and too short to judge a target.
    """
    if target is None or value is None:
        return ""
    if quick:
        return "not judged (--quick)"
    ok = value >= target if at_least else value <= target
    sign = "≥" if at_least else "≤"
    return f"{sign} {target:g}{unit}: {'met' if ok else '**MISSED**'}"


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------

def md_escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table, columns padded for reading as plain text too."""
    body = [[md_escape(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in body:
        if len(r) != len(headers):
            raise ValueError(f"row has {len(r)} cells, table has {len(headers)}: {r}")
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(cells)) + " |"

    out = [line(list(headers)), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in body]
    return "\n".join(out)


def ratio_column(rows: Iterable[list[str]], values: dict[str, float], reference: str,
                 column: int) -> None:
    """Fill cell ``column`` of each row whose label (cell 1) has a value with that
    value / the ``reference`` row's (left empty without a reference)."""
    ref = values.get(reference)
    for row in rows:
        value = values.get(row[1])
        if ref and value is not None:
            row[column] = fmt_ratio(value / ref)


def error_cell(exc: BaseException, limit: int = 70) -> str:
    text = f"ERROR {type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms"


def fmt_us(us: float) -> str:
    if us >= 100:
        return f"{us:,.0f}"
    if us >= 10:
        return f"{us:.1f}"
    return f"{us:.2f}"


def fmt_ratio(r: float) -> str:
    if r >= 100:
        return f"{r:,.0f}"
    if r >= 10:
        return f"{r:.1f}"
    if r >= 0.1:
        return f"{r:.2f}"
    return f"{r:.3f}"


# ---------------------------------------------------------------------------
# Environment header
# ---------------------------------------------------------------------------

def versions() -> str:
    parts = []
    for name in LIBRARIES:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def loadavg() -> str:
    try:
        return "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def command_line() -> str:
    """The command that produced this output, as it could be retyped.

    Run from the project root, paths inside it are shown relative to it
    (``.venv/bin/python benchmarks/overhead.py``), so the line is portable.
    """
    here = Path.cwd().resolve() == ROOT

    def show(arg: str) -> str:
        if here and os.path.isabs(arg):
            with contextlib.suppress(ValueError):
                return str(Path(arg).relative_to(ROOT))
        return arg

    return " ".join(shlex.quote(show(a)) for a in [sys.executable, *sys.argv])


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cpus() -> str:
    total = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on every platform
        return f"os.cpu_count()={total}"
    return f"os.cpu_count()={total} (usable by this process: {usable})"


def memory_total() -> str:
    try:
        import psutil
    except ImportError:
        return "RAM n/a (psutil not installed)"
    vm = psutil.virtual_memory()
    return f"RAM {vm.total / 2**30:.1f} GiB ({vm.available / 2**30:.1f} GiB available)"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               text=True, capture_output=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + (" + uncommitted changes in src/" if dirty else "")


def header(title: str, what: str, notes: Sequence[str] = ()) -> str:
    """Markdown header: what is measured, then the state of the machine."""
    lines = [f"### {title}", "", what.strip(), ""]
    lines += [f"- {n}" for n in notes]
    lines += [
        f"- date: {now()}; conveyor revision {git_revision()}",
        f"- command: `{command_line()}`",
        f"- Python {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.platform()}",
        f"- machine: {platform.machine()}, {cpu_model()}, {usable_cpus()}, {memory_total()}",
        f"- {versions()}",
        f"- load average (1/5/15 min) at start: {loadavg()}",
    ]
    if sys.dont_write_bytecode:
        lines.append("- PYTHONDONTWRITEBYTECODE is set: a fresh interpreter (spawned worker) "
                     "compiles the modules it imports from source instead of reading .pyc "
                     "files, so cold starts of spawn-based pools are a little slower than "
                     "with a normal install")
    lines.append("")
    return "\n".join(lines)


def footer(started: float) -> str:
    return (f"\n- load average at end: {loadavg()}; "
            f"table took {time.perf_counter() - started:.0f} s\n")


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout stays pure Markdown."""
    print(f"  {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Peer helpers
# ---------------------------------------------------------------------------

def _shutdown_reusable(module: Any) -> None:
    # loky < 3.5 (and joblib's vendored copy) keep the singleton in ``_executor``;
    # loky >= 3.5 in the thread-local ``_executor_storage``.
    storage = getattr(module, "_executor_storage", None)
    executor = getattr(storage, "executor", None) or getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def kill_loky_executors() -> None:
    """Stop joblib's and loky's reusable workers, so the next use starts cold.

    Both keep their workers alive between calls (idle timeout 300 s): without
    this a "cold" measurement would silently reuse them.
    """
    with contextlib.suppress(ImportError):
        from joblib.externals.loky import reusable_executor

        _shutdown_reusable(reusable_executor)
    with contextlib.suppress(ImportError):
        from loky import reusable_executor as standalone

        _shutdown_reusable(standalone)


@contextlib.contextmanager
def quiet_logs(*names: str, level: int = logging.CRITICAL + 1) -> Iterator[None]:
    """Silence the named loggers for the duration (peer libraries' shutdown noise)."""
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, saved, strict=True):
            lg.setLevel(lvl)


def quiet_dask_logs() -> contextlib.AbstractContextManager[None]:
    return quiet_logs("distributed", "distributed.nanny", "distributed.worker",
                      "distributed.scheduler", "distributed.core", level=logging.ERROR)


@contextlib.contextmanager
def dask_client(workers: int) -> Iterator[Any]:
    """A Client of a fresh LocalCluster (``workers`` processes x 1 thread, dashboard on
    a free port), closed at the end; dask's shutdown logs are silenced."""
    from distributed import Client, LocalCluster

    with quiet_dask_logs(), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client
