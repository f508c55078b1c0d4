"""The progress bar: a real tqdm bar, read from what it writes.

The bar counts items finished and is drawn by the process's refresher thread
at most ``REFRESH_EVERY`` seconds after the counts change; these tests read
the last bar drawn into a file object and wait (boundedly) for it.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor._jsonl import count_lines

# How far behind the finished items the drawn bar may be (the bound).
LAG = 0.2

# "| 9/16 [00:00<..." with a total, "9item [00:00, ..." without one
_SHOWN = re.compile(r"(\d+)(?:/(\d+))?[a-z]* \[\d")


class Screen(io.StringIO):
    """A file a tqdm bar draws on, telling waiters when it was written to."""

    def __init__(self) -> None:
        super().__init__()
        self.written = threading.Condition()

    def write(self, s: str) -> int:
        with self.written:
            n = super().write(s)
            self.written.notify_all()
        return n

    def last(self) -> str:
        """The bar as last drawn (tqdm redraws after a carriage return)."""
        return self.getvalue().rstrip("\n").split("\r")[-1]

    def shown(self) -> tuple[int, int | None]:
        """(items, total) on the bar as last drawn."""
        return shown(self.last())

    def wait_for(self, pattern: str, within: float = LAG) -> str:
        """The last bar drawn, once it matches ``pattern`` (``within`` seconds at most)."""
        deadline = time.monotonic() + within
        with self.written:
            while not re.search(pattern, self.last()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"after {within} s the bar shows {self.last()!r}, "
                                         f"not {pattern!r}")
                self.written.wait(left)
            return self.last()


def shown(bar: str) -> tuple[int, int | None]:
    m = _SHOWN.search(bar)
    assert m, f"no count in {bar!r}"
    return int(m.group(1)), None if m.group(2) is None else int(m.group(2))


def test_a_burst_of_unordered_results_shows_at_once() -> None:
    """The issue's case: 1/16 stayed on the bar while 8 more had been consumed."""
    first, burst, rest = threading.Event(), threading.Event(), threading.Event()

    def f(x: int) -> int:
        (first if x == 0 else burst if x <= 8 else rest).wait(10)
        return x

    screen = Screen()
    results = conveyor.map(f, range(16), workers=16, batch=1, ordered=False,
                           progress={"file": screen})
    try:
        first.set()
        next(results)
        screen.wait_for(r"\| 1/16 ")
        burst.set()
        for _ in range(8):
            next(results)
        screen.wait_for(r"\| 9/16 ")
    finally:
        rest.set()
    assert sorted(results) == list(range(9, 16))
    assert screen.shown() == (16, 16)
    assert screen.getvalue().endswith("\n")   # closed, left on the screen


def test_failures_show_while_the_run_goes() -> None:
    gate = threading.Event()

    def f(x: int) -> int:
        if x < 3:
            raise ValueError(x)
        gate.wait(10)
        return x

    screen = Screen()
    results = conveyor.map(f, range(10), workers=10, batch=1, ordered=False,
                           on_error="return", progress={"file": screen})
    try:
        got = [next(results) for _ in range(3)]
        assert all(isinstance(e, ValueError) for e in got)
        bar = screen.wait_for(r"failed=3\]")
        assert shown(bar) == (3, 10)
        assert results.stats.in_flight == 7   # still running
    finally:
        gate.set()
    assert sorted(results) == list(range(3, 10))
    assert "failed=3]" in screen.last() and screen.shown() == (10, 10)


def test_the_bar_counts_items_finished_not_handed_out() -> None:
    """Ordered: items waiting behind a slow first one are finished, so counted."""
    gate = threading.Event()

    def f(x: int) -> int:
        if x == 0:
            gate.wait(10)
        return x

    screen = Screen()
    with conveyor.map(f, range(6), workers=6, batch=1, progress={"file": screen}) as results:
        try:
            screen.wait_for(r"\| 5/6 ", within=5)   # nothing handed out yet
        finally:
            gate.set()
        assert list(results) == list(range(6))
    assert screen.shown() == (6, 6)


def _generator(n: int) -> Iterator[int]:
    yield from range(n)


class LyingLength:
    """Says it has 10 items, has 7: the bar's total is corrected at the end."""

    def __len__(self) -> int:
        return 10

    def __iter__(self) -> Iterator[int]:
        return iter(range(7))


@pytest.mark.parametrize(("make", "total"), [
    (lambda: list(range(7)), 7),
    (lambda: range(7), 7),
    (lambda: _generator(7), None),
    (lambda: {i: str(i) for i in range(7)}, 7),
])
def test_total_from_the_input(make: Any, total: int | None) -> None:
    screen = Screen()
    results = conveyor.map(lambda x: x, make(), progress={"file": screen})
    assert shown(screen.getvalue().split("\r")[1]) == (0, total)   # drawn at the start
    assert len(list(results)) == 7
    assert screen.shown() == (7, total)


def test_total_of_several_iterables_is_the_shortest() -> None:
    screen = Screen()
    with conveyor.Pool("thread", workers=2) as pool:
        out = list(pool.map(pow, [2, 3, 4], range(10), progress={"file": screen}))
    assert out == [1, 3, 16]
    assert shown(screen.getvalue().split("\r")[1]) == (0, 3)
    assert screen.shown() == (3, 3)
    screen = Screen()
    with conveyor.Pool("thread", workers=2) as pool:   # a generator beside: the list bounds it
        out = list(pool.map(pow, [2, 3, 4], _generator(10), progress={"file": screen}))
    assert out == [1, 3, 16]
    assert screen.shown() == (3, 3)
    screen = Screen()
    with conveyor.Pool("thread", workers=2) as pool:   # a shorter generator: corrected at the end
        out = list(pool.map(pow, [2, 3, 4], _generator(2), progress={"file": screen}))
    assert out == [1, 3]
    assert shown(screen.getvalue().split("\r")[1]) == (0, 3)
    assert screen.shown() == (2, 2)


def test_a_wrong_length_is_corrected_when_the_input_ends() -> None:
    screen = Screen()
    assert list(conveyor.map(lambda x: x, LyingLength(), progress={"file": screen})) == \
        list(range(7))
    assert shown(screen.getvalue().split("\r")[1]) == (0, 10)
    assert screen.shown() == (7, 7)


def test_a_run_stopped_early_keeps_its_total() -> None:
    screen = Screen()
    with conveyor.map(lambda x: x, range(100_000), progress={"file": screen}) as results:
        next(results)
    n, total = screen.shown()
    assert total == 100_000 and 1 <= n < 100_000


def test_tqdm_options_pass_through() -> None:
    screen = Screen()
    out = list(conveyor.map(lambda x: x, range(50), desc="ignored",
                            progress={"file": screen, "desc": "rows", "unit": "row",
                                      "ncols": 60, "ascii": True}))
    assert len(out) == 50
    last = screen.last()
    assert last.startswith("rows: 100%|##########")   # desc and ascii from the dict
    assert "row/s]" in last and len(last) <= 60
    assert screen.shown() == (50, 50)


def test_a_disabled_bar_is_not_refreshed() -> None:
    screen = Screen()
    gate = threading.Event()

    def f(x: int) -> int:
        gate.wait(10)
        return x

    with conveyor.map(f, range(4), progress={"file": screen, "disable": True}) as results:
        try:
            assert not [t for t in threading.enumerate() if t.name == "conveyor-progress"]
        finally:
            gate.set()
        assert list(results) == list(range(4))
    assert screen.getvalue() == ""


def test_tqdm_refusing_the_options_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"progress=\{'colour_of_bar': 1\}: tqdm does not "
                                        r"take these options"):
        conveyor.map(abs, range(3), progress={"colour_of_bar": 1})


def test_tqdm_refusing_the_options_leaves_no_worker_behind() -> None:
    """amap starts its backend first: the refused options close it again (the
    autouse fixtures check that no thread and no process is left)."""
    async def main() -> None:
        with pytest.raises(TypeError, match="tqdm does not take these options"):
            conveyor.amap(abs, range(3), backend="process", workers=1,
                          progress={"colour_of_bar": 1})

    asyncio.run(main())


@pytest.mark.parametrize("call", ["map", "pool", "stream"])
def test_without_tqdm_progress_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                call: str) -> None:
    # What an interpreter without tqdm does: `import tqdm` raises ImportError.
    for name in [m for m in sys.modules if m == "tqdm" or m.startswith("tqdm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match=r"needs tqdm, which is not installed; install it "
                                          r"\(pip install tqdm\) or leave progress out"):
        if call == "map":
            conveyor.map(abs, range(3), progress=True)
        elif call == "pool":
            with conveyor.Pool("thread", workers=1) as pool:
                pool.map(abs, range(3), progress={"desc": "x"})
        else:
            conveyor.stream(range(3)).map(abs, progress=True)
    assert list(conveyor.map(abs, range(3))) == [0, 1, 2]   # without a bar: fine


def test_a_failing_bar_does_not_fail_the_run() -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            if "/8 " in s and " 0/8 " not in s:   # the first bar drawn after the start
                raise RuntimeError("the terminal went away")
            return super().write(s)

    with pytest.warns(RuntimeWarning, match="progress bar stopped showing progress.*"
                                            "the terminal went away"):
        assert list(conveyor.map(lambda x: x, range(8), workers=1, batch=1,
                                 progress={"file": Broken()})) == list(range(8))


def test_pipeline_stages_know_their_totals() -> None:
    """A map keeps its input's total; batch(n) divides it; filter, flat_map and
    unbatch make the next stage's unknown; so does a map that skips failures."""
    screens = {name: Screen() for name in
               ("first", "sums", "even", "after_filter", "expand", "after_expand",
                "skips", "after_skip")}

    def bar(name: str) -> dict[str, Any]:
        return {"file": screens[name]}

    def no_sevens(x: int) -> int:
        if x % 10 == 7:
            raise ValueError(x)
        return x

    out = (conveyor.stream(range(100))
           .map(lambda x: x, progress=bar("first"))
           .batch(10)                                                # 10 lists
           .map(sum, progress=bar("sums"))
           .filter(lambda s: s // 100 % 2 == 0, progress=bar("even"))  # 10 tested
           .map(lambda s: s, progress=bar("after_filter"))           # unknown
           .to_list())
    assert len(out) == 5
    out = (conveyor.stream(range(20))
           .flat_map(lambda x: [x, x], progress=bar("expand"))       # 20 in
           .map(no_sevens, on_error="skip", progress=bar("after_expand"))   # unknown
           .to_list())
    assert len(out) == 36
    out = (conveyor.stream(list(range(20)))
           .map(no_sevens, on_error="skip", progress=bar("skips"))
           .map(lambda x: x, progress=bar("after_skip"))             # unknown
           .to_list())
    assert len(out) == 18
    shows = {name: s.shown() for name, s in screens.items()}
    assert shows == {"first": (100, 100), "sums": (10, 10), "even": (10, 10),
                     "after_filter": (5, None), "expand": (20, 20),
                     "after_expand": (40, None), "skips": (20, 20), "after_skip": (18, None)}
    for name in ("first", "sums", "even", "expand", "skips"):   # known from the start
        assert shown(screens[name].getvalue().split("\r")[1])[1] is not None


def test_stream_progress_labels_each_stage_with_its_total(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = (conveyor.stream(range(30), progress=True)
           .map(lambda x: x, name="first").batch(4).map(len, name="sizes").to_list())
    assert out == [4] * 7 + [2]
    err = capsys.readouterr().err
    assert "map first: 100%" in err and "30/30" in err
    assert "map sizes: 100%" in err and "8/8" in err


def test_amap_bar() -> None:
    screen = Screen()

    async def double(x: int) -> int:
        return 2 * x

    async def main() -> list[int]:
        return [x async for x in conveyor.amap(double, range(20), progress={"file": screen})]

    assert asyncio.run(main()) == [2 * x for x in range(20)]
    assert screen.shown() == (20, 20)


# -- the CLI -------------------------------------------------------------------

TASKS = """
def double(x):
    if x % 5 == 4:
        raise ValueError(x)
    return 2 * x
"""


def _cli(tmp_path: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """(exit status, stdout, stderr): bytes decoded, since text mode would turn
    the bar's carriage returns into newlines."""
    (tmp_path / "tasks.py").write_text(TASKS)
    proc = subprocess.run([sys.executable, "-m", "conveyor", "run", "tasks:double",
                           "--progress", "--on-error", "return", *args],
                          cwd=tmp_path, input=stdin.encode(), capture_output=True,
                          timeout=60)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_cli_bar_knows_the_lines_of_its_input_file(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("".join(f"{i}\n" for i in range(40)) + "\n  \n")
    status, out, err = _cli(tmp_path, "-i", "in.jsonl")
    assert status == 0, err
    assert len(out.splitlines()) == 40
    bars = err.split("\r")
    assert shown(bars[1]) == (0, 40)   # the total, before any result
    last = [b for b in bars if _SHOWN.search(b)][-1]
    assert shown(last) == (40, 40) and "failed=8]" in last


def test_cli_bar_from_stdin_has_no_total(tmp_path: Path) -> None:
    status, _, err = _cli(tmp_path, stdin="".join(f"{i}\n" for i in range(10)))
    assert status == 0, err
    last = [b for b in err.split("\r") if _SHOWN.search(b)][-1]
    assert shown(last) == (10, None) and "failed=2]" in last


@pytest.mark.parametrize("text", [
    "", "\n", "1", "1\n", "1\n\n2", "\n\n1\n \t\n2\n", "1\r\n\r\n2\r\n", " 1 \n  \n\x0c\n3 ",
    "[1, 2]\n{}\n\n\n\n" * 3,
])
def test_count_lines_counts_what_the_cli_reads(tmp_path: Path, text: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(text.encode())
    with open(path, "rb") as f:
        items = sum(1 for line in f if line.strip())   # what `conveyor run` reads
    for chunk in (1, 2, 3, 5, 1 << 20):   # a blank line across chunks is counted once
        assert count_lines(str(path), chunk=chunk) == items


def test_count_lines_counts_no_pipe_and_no_missing_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert count_lines(str(fifo)) is None   # not opened: nobody writes to it
    assert count_lines(str(tmp_path / "missing.jsonl")) is None


def test_a_starmap_stage_passes_its_total_on() -> None:
    """A starmap stage, as a map stage, gives one result per item: the next stage
    knows its total; skipping failures makes it unknown, as after a map."""
    screens = {name: Screen() for name in ("spread", "after", "skips", "after_skip")}

    def bar(name: str) -> dict[str, Any]:
        return {"file": screens[name]}

    def no_sevens(a: int, b: int) -> int:
        if a == 7:
            raise ValueError(a)
        return a + b

    pairs = [(i, 1) for i in range(12)]
    out = (conveyor.stream(pairs)
           .starmap(pow, progress=bar("spread"))
           .map(str, progress=bar("after"))
           .to_list())
    assert out == [str(i) for i in range(12)]
    out = (conveyor.stream(pairs)
           .starmap(no_sevens, on_error="skip", progress=bar("skips"))
           .map(str, progress=bar("after_skip"))
           .to_list())
    assert len(out) == 11
    shows = {name: s.shown() for name, s in screens.items()}
    assert shows == {"spread": (12, 12), "after": (12, 12), "skips": (12, 12),
                     "after_skip": (11, None)}
    assert shown(screens["after"].getvalue().split("\r")[1])[1] == 12   # from the start
