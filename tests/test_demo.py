"""``conveyor demo``: it runs, prints every pattern, and conveyor's rows are concurrent."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from typing import Any

import pytest

import conveyor as conveyor_package
from conveyor import _demo
from conveyor.cli import build_parser, main

PATTERNS = {
    1: "for loop",
    2: "threading.Thread",
    3: "as_completed",
    4: "ThreadPoolExecutor.map",
    5: "ProcessPoolExecutor.map",
    6: "create_task",
    7: "asyncio.Queue",
}

_d = _demo.SLEEP * _demo.QUICK_SCALE
_q = _demo.QUEUE_SLEEP * _demo.QUICK_SCALE
#: the sleep-based patterns: (conveyor's ideal time, its time if it ran one task at a time)
SLEEPERS = {
    1: (_d, _demo.CALLS * _d),
    2: (_d, _demo.CALLS * _d),
    3: (_d, _demo.CALLS * _d),
    4: (_d, _demo.CALLS * _d),
    6: (_d, _demo.CALLS * _d),
    7: (math.ceil(_demo.QUEUE_ITEMS / _demo.QUEUE_WORKERS) * _q, _demo.QUEUE_ITEMS * _q),
}

_ROW = re.compile(r"^\|\s*(\d)\.\s")
_SECONDS = re.compile(r"^(\d+\.\d+) s$")


def _seconds(cell: str) -> float:
    match = _SECONDS.match(cell)
    assert match, f"not a time: {cell!r}"
    return float(match.group(1))


def parse_table(output: str) -> dict[int, tuple[str, float, float, float, float]]:
    """{pattern number: (name, stdlib, stdlib ideal, conveyor, conveyor ideal)}."""
    rows: dict[int, tuple[str, float, float, float, float]] = {}
    for line in output.splitlines():
        match = _ROW.match(line)
        if not match:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 7, line
        name, stdlib, stdlib_ideal, _, conveyor, conveyor_ideal, _ = cells
        number = int(match.group(1))
        assert number not in rows, f"pattern {number} appears twice"
        rows[number] = (name, _seconds(stdlib), _seconds(stdlib_ideal),
                        _seconds(conveyor), _seconds(conveyor_ideal))
    return rows


def check_output(output: str) -> None:
    rows = parse_table(output)
    assert sorted(rows) == sorted(PATTERNS), output
    for number, word in PATTERNS.items():
        assert word in rows[number][0], (number, rows[number][0])
    for name, stdlib, stdlib_ideal, conveyor, conveyor_ideal in rows.values():
        assert min(stdlib, stdlib_ideal, conveyor, conveyor_ideal) > 0, name
    for number, (ideal, one_at_a_time) in SLEEPERS.items():
        name, _, _, conveyor, conveyor_ideal = rows[number]
        assert conveyor_ideal == pytest.approx(ideal, abs=0.0015), name
        # halfway between the ideal and running the tasks one at a time: generous for
        # scheduling noise, and still fails if conveyor ran the tasks sequentially
        bound = (ideal + one_at_a_time) / 2
        assert conveyor < bound, (
            f"{name}: conveyor took {conveyor:.3f} s, ideal {ideal:.3f} s, "
            f"sequential {one_at_a_time:.3f} s\n{output}")
        assert conveyor >= 0.9 * ideal, name  # it really waited
    assert "[1]" in rows[1][0]
    assert rows[1][1] >= 0.9 * _demo.CALLS * _d, "the stdlib loop is sequential"
    # pattern 5: the conveyor side runs on worker processes, against the same ideal
    _, _, stdlib_ideal, _, conveyor_ideal = rows[5]
    assert conveyor_ideal == stdlib_ideal
    calls = output[output.index("the conveyor side of each row:"):].splitlines()
    (row5_call,) = [line for line in calls if line.split()[:1] == ["5"]]
    assert f'backend="process", workers={_demo.CPU_WORKERS})' in row5_call, row5_call
    notes = " ".join(output[output.index("[5] "):].split())
    assert "both sides start" in notes and "inside the timed call" in notes
    assert "never import __main__" in notes and "without the guard" in notes
    assert "is coming" not in output and "on threads)" not in output


@pytest.mark.timeout(60)
def test_demo_quick_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "demo", "--quick"],
        capture_output=True, text=True, timeout=50, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    check_output(proc.stdout)


def test_demo_quick_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    check_output(captured.out)
    lines = captured.out.splitlines()
    progress = [line for line in lines if re.match(r"^\[\d/7\] ", line)]
    assert len(progress) == len(PATTERNS)
    assert lines.index(progress[-1]) < next(i for i, s in enumerate(lines) if _ROW.match(s))


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--scale", "0"],
        ["demo", "--scale", "-1"],
        ["demo", "--scale", "nan"],
        ["demo", "--scale", "fast"],
        ["demo", "--quick", "--scale", "2"],
        [],
        ["nope"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: conveyor" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "scale"),
    [(["demo"], 1.0), (["demo", "--quick"], _demo.QUICK_SCALE), (["demo", "--scale", "0.5"], 0.5)],
)
def test_scale_option(argv: list[str], scale: float) -> None:
    assert build_parser().parse_args(argv).scale == scale


def test_run_demo_rejects_bad_scale() -> None:
    with pytest.raises(ValueError, match="positive"):
        _demo.run_demo(scale=0.0)


def test_cpu_work_runs_in_a_process() -> None:
    # ProcessPoolExecutor must be able to import the CPU function by name
    assert _demo.cpu_bound.__module__ == "conveyor._demo"
    assert _demo.cpu_bound(4) == 0 + 1 + 4 + 9


def test_conveyor_side_of_pattern_5_uses_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real_map = conveyor_package.map

    def spy(fn: Any, items: Any, **kwargs: Any) -> Any:
        seen.append({"fn": fn, **kwargs})
        return real_map(fn, items, **kwargs)

    monkeypatch.setattr(conveyor_package, "map", spy)  # _demo calls conveyor.map
    _demo.conveyor_processes([4, 5])
    assert seen == [{"fn": _demo.cpu_bound, "backend": "process",
                     "workers": _demo.CPU_WORKERS}]


def _cpu_notes(stdlib: float, conveyor_time: float) -> str:
    plan = _demo.CpuPlan(sizes=[1] * _demo.CPU_TASKS, sequential=1.0, cpus=2, ideal=0.5)
    row = _demo.Row("5. x", stdlib, 0.5, conveyor_time, 0.5, "call")
    return " ".join(" ".join(_demo._footnotes(1.0, (plan, row))).split())


@pytest.mark.parametrize(
    ("stdlib", "conveyor_time", "slow_start"),
    [(0.6, 0.6, False), (1.5, 0.6, True), (0.6, 1.5, True)],
)
def test_cpu_footnote_start_up_hint(stdlib: float, conveyor_time: float,
                                    slow_start: bool) -> None:
    notes = _cpu_notes(stdlib, conveyor_time)
    assert "ideal = that time spread over min(4 workers, 2 CPUs) = 0.500 s." in notes
    assert "both times include that start-up" in notes
    assert ("try a larger --scale" in notes) is slow_start
