"""``conveyor.stream``: stages on their own backends, bounded between them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import conveyor

from .conftest import wait_no_conveyor_threads


class Counting:
    """An input that counts how many items were taken from it."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        i = 0
        while self.n is None or i < self.n:
            self.pulled += 1
            yield i
            i += 1


def slow_identity(x: int) -> int:
    time.sleep(0.002)
    return x


async def adouble(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def test_stages_on_three_backends_give_the_sequential_answer() -> None:
    """map (threads) -> map (processes) -> filter -> flat_map -> map (asyncio)."""
    out = (conveyor.stream(range(200))
           .map(lambda x: x + 1, workers=8)
           .map(lambda x: x * x, backend="process", workers=2)
           .filter(lambda x: x % 3 != 0)
           .flat_map(lambda x: [x, -x])
           .map(adouble, workers=20)
           .to_list())
    expected = [2 * y for x in range(200) if ((x + 1) ** 2) % 3 != 0
                for y in ((x + 1) ** 2, -((x + 1) ** 2))]
    assert out == expected


def test_batch_and_unbatch() -> None:
    """batch(n) groups consecutive items; unbatch() undoes it."""
    s = conveyor.stream(range(10)).batch(4)
    assert list(s) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(s.map(sum).batch(2).unbatch()) == [6, 22, 17]
    assert list(s.unbatch()) == list(range(10))


def test_a_slow_last_stage_bounds_how_far_the_source_runs_ahead() -> None:
    """Backpressure end to end: each stage holds at most its window."""
    src = Counting()
    out = (conveyor.stream(src)
           .map(lambda x: x, window=8, workers=2)
           .map(lambda x: x, window=8, workers=2)
           .map(slow_identity, window=8, workers=2))
    with out.open() as pipeline:
        for i, x in enumerate(pipeline):
            assert x == i
            # 3 windows of 8, plus what each input pump holds and the consumer's chunk
            assert src.pulled <= i + 1 + 3 * 8 + 3 * 8
            if i == 300:
                break
    assert not wait_no_conveyor_threads()


def test_a_failing_stage_stops_the_whole_pipeline() -> None:
    """Raising at item 10 with window 4: the error names its stage; nothing is left."""
    src = Counting()

    def parse(x: int) -> int:
        if x == 10:
            raise ValueError("bad record 10")
        return x

    s = (conveyor.stream(src)
         .map(lambda x: x, window=4)
         .map(parse, backend="process", workers=2, window=4)
         .map(lambda x: x, window=4))
    got = []
    with pytest.raises(ValueError, match="bad record 10") as info:
        for x in s:
            got.append(x)
    assert got == list(range(10))
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "pipeline stage 'map test_a_failing_stage_stops_the_whole_pipeline.<locals>.parse'" \
        in notes
    assert "input iterable" not in notes
    assert isinstance(info.value.__cause__, conveyor.errors.RemoteTraceback)
    assert src.pulled <= 10 + 3 * 4 + 3 * 4 + 4
    assert not wait_no_conveyor_threads()


def test_on_error_of_a_stage_applies_to_that_stage_only() -> None:
    """on_error="skip" drops a stage's failures; the stages after it carry on."""
    def fragile(x: int) -> int:
        if x % 5 == 0:
            raise KeyError(x)
        return x

    s = conveyor.stream(range(20)).map(fragile, on_error="skip").map(lambda x: x * 10)
    assert s.to_list() == [x * 10 for x in range(20) if x % 5]


def test_leaving_early_and_close_stop_every_stage() -> None:
    """break, and close() from another thread, end every stage promptly."""
    gate = threading.Event()

    def slow(x: int) -> int:
        gate.wait(0.05)
        return x

    s = conveyor.stream(Counting()).map(slow, workers=4).map(slow, workers=4)
    for x in s:
        if x == 20:
            break
    assert not wait_no_conveyor_threads(5)

    pipeline = s.open()
    seen = []
    timer = threading.Timer(0.3, pipeline.close)
    timer.start()
    t0 = time.monotonic()
    for x in pipeline:
        seen.append(x)
    timer.join()
    assert time.monotonic() - t0 < 5
    assert seen == list(range(len(seen)))
    assert not wait_no_conveyor_threads(5)


def test_async_iteration_and_stats() -> None:
    """A pipeline is iterable from async code; stats are per stage."""
    pipeline = conveyor.stream(range(50)).map(lambda x: x + 1, name="inc") \
        .filter(lambda x: x % 2 == 0, name="even").open()

    async def main() -> list[int]:
        return [x async for x in pipeline]

    assert asyncio.run(asyncio.wait_for(main(), 30)) == list(range(2, 51, 2))
    stats = pipeline.stats
    assert list(stats) == ["map inc", "filter even"]
    assert stats["map inc"].done == 50
    assert stats["filter even"].done == 50


def test_bad_stage_options_fail_while_describing_the_pipeline() -> None:
    """Stage options are checked when the stage is added, before anything runs."""
    s = conveyor.stream(range(3))
    with pytest.raises(ValueError, match="on_error"):
        s.map(abs, on_error="explode")
    with pytest.raises(TypeError, match="unexpected option"):
        s.map(abs, colour="red")
    with pytest.raises(ValueError, match="workers"):
        s.map(abs, workers=0)
    with pytest.raises(TypeError, match="filter stages run plain functions"):
        s.filter(adouble)
    with pytest.raises(ValueError, match="n must be >= 1"):
        s.batch(0)


def test_one_progress_bar_per_stage(capsys: pytest.CaptureFixture[str]) -> None:
    """stream(progress=True): a bar per task stage, labelled with the stage's name."""
    out = (conveyor.stream(range(300), progress=True)
           .map(lambda x: x + 1, name="first")
           .batch(10).unbatch()
           .filter(lambda x: x % 2 == 0, name="second")
           .to_list())
    assert out == list(range(2, 301, 2))
    err = capsys.readouterr().err
    assert "map first" in err and "300/300" in err
    assert "filter second" in err


CTRL_C_SCRIPT = textwrap.dedent("""
    import os, time, conveyor

    def slow(x):
        time.sleep(0.5 if x else 0)
        return x

    out = (conveyor.stream(range(10_000))
           .map(slow, workers=4)
           .map(lambda x: os.getpid(), backend="process", workers=2)
           .map(slow, workers=4))
    for pid in out:
        print("result", pid, flush=True)
""")


def test_ctrl_c_stops_every_stage(tmp_path: Path) -> None:
    """A real SIGINT to a script iterating a 3-stage pipeline: it exits within 2 s."""
    script = tmp_path / "pipeline_ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("result "), line
        workers = psutil.Process(proc.pid).children(recursive=True)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 2.0, elapsed
    assert "KeyboardInterrupt" in err
    _, alive = psutil.wait_procs(workers, timeout=2)
    assert not alive


def test_the_worked_example_runs() -> None:
    """examples/pipeline.py: download (threads) -> parse (processes) -> store (asyncio)."""
    example = Path(__file__).resolve().parent.parent / "examples" / "pipeline.py"
    proc = subprocess.run([sys.executable, str(example), "40"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("stored 36 of 40 pages")   # pages 7, 17, 27, 37 are not ok
    assert [line.split()[1] for line in lines[1:]] == ["download", "parse", "ok", "store"]


def test_async_iteration_applies_what_follows_the_last_task_stage() -> None:
    """filter, flat_map, batch and unbatch after the last task stage work in `async for`
    exactly as in a plain `for`."""
    def build() -> conveyor.Stream[list[int]]:
        return (conveyor.stream(range(30)).batch(4).unbatch()
                .flat_map(lambda x: [x, x + 100], name="twice")
                .filter(lambda x: x % 3 != 0, name="no threes")
                .batch(5).unbatch().batch(7))

    expected = build().to_list()

    async def main() -> list[list[int]]:
        async with build().open() as pipeline:
            return [x async for x in pipeline]

    assert asyncio.run(asyncio.wait_for(main(), 30)) == expected
    assert sum(map(len, expected)) == sum(1 for x in range(30) for y in (x, x + 100)
                                           if y % 3 != 0)
    assert not wait_no_conveyor_threads(5)


def test_async_iteration_raises_with_the_stage_name_and_stops_every_stage() -> None:
    def boom(x: int) -> int:
        if x == 10:
            raise ValueError(f"bad item {x}")
        return x

    pipeline = (conveyor.stream(Counting(10_000)).map(slow_identity, workers=4, window=4)
                .map(boom, workers=2, window=4, name="check").open())

    async def main() -> list[int]:
        got = []
        async for x in pipeline:
            got.append(x)
        return got

    with pytest.raises(ValueError, match="bad item 10") as info:
        asyncio.run(asyncio.wait_for(main(), 30))
    assert "conveyor: raised in the pipeline stage 'map check'" in getattr(
        info.value, "__notes__", [])
    assert not wait_no_conveyor_threads(5)


def test_async_break_stops_every_stage_without_blocking_the_loop() -> None:
    """Leaving `async for` early stops the stages; a ticker task keeps running meanwhile,
    so the waiting never blocks the event loop."""
    source = Counting()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async def main() -> list[int]:
        tick = asyncio.create_task(ticker())
        got = []
        async with conveyor.stream(source).map(slow_identity, workers=4).open() as pipeline:
            async for x in pipeline:
                got.append(x)
                if len(got) == 200:
                    break
        tick.cancel()
        return got

    assert asyncio.run(asyncio.wait_for(main(), 30)) == list(range(200))
    # 200 items x 2 ms on 4 workers: the loop ran its ticker all along (>= 50 ticks)
    assert ticks >= 50
    pulled = source.pulled
    assert not wait_no_conveyor_threads(5)
    assert source.pulled == pulled   # nothing read after the stages stopped
