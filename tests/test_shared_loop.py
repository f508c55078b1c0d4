"""Sync code runs coroutine functions on one long-lived event loop per process.

Real clients (httpx, aiohttp) against a real HTTP server on 127.0.0.1, real
threads, a real fork and real interpreter exits in subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import aiohttp
import httpx
import pytest

import conveyor

from ._httpserver import HttpServer

# The clients below talk plain HTTP to 127.0.0.1: verify=False spares each
# httpx client loading a CA bundle it would not use (0.2 s a client).


@pytest.fixture(scope="module")
def server() -> Iterator[HttpServer]:
    srv = HttpServer().start()
    yield srv
    srv.stop()


def test_a_module_level_httpx_client_serves_successive_maps(server: HttpServer) -> None:
    client = httpx.AsyncClient(verify=False)   # made outside any loop, as at a top level

    async def fetch(x: int) -> str:
        return (await client.get(f"{server.url}/echo/{x}")).text

    server.ports.clear()
    try:
        assert list(conveyor.map(fetch, range(10), workers=4)) == [str(x) for x in range(10)]
        first = set(server.ports)
        server.ports.clear()
        assert list(conveyor.map(fetch, range(10, 20), workers=4)) == \
            [str(x) for x in range(10, 20)]
    finally:
        conveyor.run_coroutine(client.aclose())
    # The second map reused connections the first one opened: one client, one pool.
    assert first & set(server.ports)


def test_a_module_level_aiohttp_session_serves_successive_maps(server: HttpServer) -> None:
    # aiohttp wants its session made on the loop it will be used on: lazily,
    # in the first call (no await between the test and the assignment, so the
    # coroutines of one loop cannot race).
    holder: dict[str, aiohttp.ClientSession] = {}

    async def fetch(x: int) -> str:
        if "session" not in holder:
            holder["session"] = aiohttp.ClientSession()
        async with holder["session"].get(f"{server.url}/echo/{x}") as r:
            return await r.text()

    ports: list[set[int]] = []
    try:
        for start in (0, 20, 40):
            server.ports.clear()
            assert list(conveyor.map(fetch, range(start, start + 20), workers=4)) == \
                [str(x) for x in range(start, start + 20)]
            ports.append(set(server.ports))
    finally:
        if "session" in holder:
            conveyor.run_coroutine(holder["session"].close())
    assert ports[0] & ports[1] and ports[0] & ports[2]   # its connections were reused


def _loop_and_thread() -> tuple[asyncio.AbstractEventLoop, str]:
    return asyncio.get_running_loop(), threading.current_thread().name


def test_maps_pools_pipelines_and_run_coroutine_share_one_loop() -> None:
    seen: list[tuple[asyncio.AbstractEventLoop, str]] = []

    async def note(x: int) -> int:
        seen.append(_loop_and_thread())
        await asyncio.sleep(0)
        return x

    async def where() -> tuple[asyncio.AbstractEventLoop, str]:
        return _loop_and_thread()

    assert list(conveyor.map(note, range(10))) == list(range(10))
    assert sorted(conveyor.map(note, range(10), workers=2, ordered=False, batch=3)) == \
        list(range(10))
    with conveyor.Pool(backend="asyncio", workers=3) as pool:
        assert list(pool.map(note, range(10))) == list(range(10))
        assert pool.submit(note, 7).result(10) == 7
    assert conveyor.stream(range(5)).map(note).to_list() == list(range(5))
    seen.append(conveyor.run_coroutine(where()))
    loops = {id(loop) for loop, _ in seen}
    assert len(loops) == 1, "every sync path ran on the same loop object"
    assert {name for _, name in seen} == {"conveyor-loop"}
    assert seen[0][0].is_running()


def test_maps_from_two_threads_run_on_the_loop_at_once(server: HttpServer) -> None:
    client = httpx.AsyncClient(verify=False)
    # Each map's first item waits for the other map's first item, on asyncio
    # Events (bound to the loop that first waits on them): both maps can finish
    # only if both run on the same loop at the same time.
    events: dict[str, asyncio.Event] = {}
    barrier = threading.Barrier(2)
    out: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def event(name: str) -> asyncio.Event:
        if name not in events:
            events[name] = asyncio.Event()   # made on the loop, as 3.10's Event wants
        return events[name]

    def run(me: str, other: str) -> None:
        async def fetch(x: int) -> str:
            if x == 0:
                event(me).set()
                await asyncio.wait_for(event(other).wait(), 10)
            return (await client.get(f"{server.url}/echo/{me}{x}")).text

        try:
            barrier.wait(10)
            out[me] = list(conveyor.map(fetch, range(10), workers=5))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("a", "b")),
               threading.Thread(target=run, args=("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    conveyor.run_coroutine(client.aclose())
    assert not errors
    assert out == {m: [f"{m}{x}" for x in range(10)] for m in "ab"}


def test_a_notebook_shares_a_client_through_amap_on_the_kernels_loop(
        server: HttpServer) -> None:
    # A kernel runs every cell's top-level await on its one loop (modelled
    # here by one loop running three "cells"): a client made in a cell
    # serves amap in later cells, on that loop, not on conveyor's.
    kernel = asyncio.new_event_loop()
    cells: dict[str, httpx.AsyncClient] = {}

    async def make_client() -> None:
        cells["client"] = httpx.AsyncClient(verify=False)

    async def fetch(x: int) -> tuple[str, bool]:
        text = (await cells["client"].get(f"{server.url}/echo/{x}")).text
        return text, asyncio.get_running_loop() is kernel

    async def cell(n: int) -> list[tuple[str, bool]]:
        return [r async for r in conveyor.amap(fetch, range(n), workers=4)]

    try:
        kernel.run_until_complete(make_client())
        for n in (10, 20):
            assert kernel.run_until_complete(cell(n)) == [(str(x), True) for x in range(n)]
        kernel.run_until_complete(cells["client"].aclose())
    finally:
        kernel.close()


# -- the life of the loop: interpreter exit, Ctrl-C, fork (each in a fresh interpreter)

_WARN = ["-W", "always::ResourceWarning", "-W", "always::RuntimeWarning"]


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    # A session of its own: a hung run is killed with everything it forked.
    return subprocess.Popen([sys.executable, *_WARN, "-c", script, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen[str], limit: float = 30) -> tuple[str, str]:
    """The rest of the output once the process has ended (within ``limit`` s)."""
    assert proc.stdout is not None and proc.stderr is not None
    try:
        proc.wait(limit)   # the scripts write little: no pipe fills up meanwhile
        # Read through the file objects: communicate() reads the pipes' fds and
        # would miss what an earlier readline() buffered.
        return proc.stdout.read(), proc.stderr.read()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)   # a forked child left behind, if any
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


EXIT_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    import aiohttp, httpx
    import conveyor

    url, mode = sys.argv[1], sys.argv[2]
    client = httpx.AsyncClient(verify=False)
    session = None

    async def fetch(x):
        global session
        if session is None:
            session = aiohttp.ClientSession()
        async with session.get(f"{url}/echo/{x}") as r:
            a = await r.text()
        b = (await client.get(f"{url}/echo/{x}")).text
        await asyncio.to_thread(len, a)          # the loop's default executor too
        return a + b

    for n in (3, 6):
        assert list(conveyor.map(fetch, range(n), workers=3)) == [str(x) * 2 for x in range(n)]
    pool = conveyor.Pool(backend="asyncio", workers=2)    # left open
    assert pool.submit(fetch, 1).result(10) == "11"

    async def ticks():
        try:
            while True:
                yield 1
        finally:
            print("generator finalised", flush=True)

    async def first_tick():
        gen = ticks()
        await gen.__anext__()                      # on the loop: the loop knows of it
        return gen

    gen = conveyor.run_coroutine(first_tick())     # an async generator left suspended

    async def forever(x=None):
        try:
            await asyncio.sleep(3600)
        finally:
            print("task cancelled", flush=True)

    async def spawn():
        task = asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)
        return task

    task = conveyor.run_coroutine(spawn())        # a task nobody awaits, left running
    conveyor.run_coroutine(client.aclose())       # the clients are closed on their loop
    conveyor.run_coroutine(session.close())
    if mode == "running":                          # a map left running
        results = conveyor.map(forever, range(100), workers=4)
    print("done", flush=True)
""")


@pytest.mark.parametrize("mode", ["finished", "running"])
def test_the_interpreter_exits_cleanly_and_fast(server: HttpServer, mode: str) -> None:
    proc = _python(EXIT_SCRIPT, server.url, mode)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "done\n"
    t0 = time.monotonic()
    out, err = _finish(proc)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert "task cancelled" in out
    assert "generator finalised" in out
    assert elapsed < 3, f"exit took {elapsed:.1f} s"
    if mode == "finished":
        assert err == ""
    else:
        # A map left running may be reported by conveyor itself; asyncio has
        # nothing to complain about.
        for complaint in ("Task was destroyed", "Event loop is closed", "Exception ignored",
                          "Traceback", "never awaited", "unclosed", "Unclosed"):
            assert complaint not in err, err


CTRL_C_SCRIPT = textwrap.dedent("""
    import asyncio, threading
    import conveyor

    started = threading.Event()

    async def hang(x):
        started.set()
        await asyncio.sleep(60)

    try:
        with conveyor.map(hang, range(100), workers=4) as results:
            started.wait(10)
            print("ready", flush=True)             # SIGINT comes now
            for _ in results:
                pass
    except KeyboardInterrupt:
        print("map interrupted", flush=True)

    async def hang_once():
        print("ready", flush=True)                 # SIGINT comes now
        await asyncio.sleep(60)

    try:
        conveyor.run_coroutine(hang_once())
    except KeyboardInterrupt:
        print("run_coroutine interrupted", flush=True)

    async def left():
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me]
        if others:
            await asyncio.wait(others, timeout=5)
        return sum(not t.done() for t in others)

    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    print("left", conveyor.run_coroutine(left()), flush=True)
    print("after", sum(conveyor.map(double, range(100))), flush=True)
""")


def test_ctrl_c_leaves_the_loop_healthy() -> None:
    proc = _python(CTRL_C_SCRIPT)
    assert proc.stdout is not None
    try:
        for expect in ("map interrupted", "run_coroutine interrupted"):
            assert proc.stdout.readline() == "ready\n"
            os.kill(proc.pid, signal.SIGINT)
            assert proc.stdout.readline() == f"{expect}\n"
    finally:
        out, err = _finish(proc)
    assert out == "left 0\nafter 9900\n", err
    assert proc.returncode == 0
    assert err == ""


FORK_SCRIPT = textwrap.dedent("""
    import asyncio, os, sys, threading, warnings
    import conveyor

    async def where(x):
        await asyncio.sleep(0)
        return x, id(asyncio.get_running_loop()), threading.current_thread().name

    def check(rows):
        assert [x for x, _, _ in rows] == list(range(20)), rows
        (loop, name), = {(loop, name) for _, loop, name in rows}
        assert name == "conveyor-loop", name
        return loop

    parent = check(list(conveyor.map(where, range(20))))
    with warnings.catch_warnings():
        # 3.12+ warns that forking a process with threads may deadlock the child.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        child = check(list(conveyor.map(where, range(20))))
        print("child", "own loop" if child != parent else "parent's loop", flush=True)
        sys.exit(0)                                   # the child's exit hook runs too
    print("child exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
    again = check(list(conveyor.map(where, range(20))))
    print("parent", "same loop" if again == parent else "another loop", flush=True)
""")


# Only where there is a fork to test (not on Windows).
if hasattr(os, "fork"):
    def test_a_forked_child_runs_maps_on_a_loop_of_its_own() -> None:
        proc = _python(FORK_SCRIPT)
        out, err = _finish(proc)
        assert out == "child own loop\nchild exit 0\nparent same loop\n", err
        assert proc.returncode == 0
        assert err == ""
