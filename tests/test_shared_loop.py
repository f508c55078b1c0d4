"""Sync code runs coroutine functions on one long-lived event loop per process.

Real clients (httpx, aiohttp) against a real HTTP server on 127.0.0.1, real
threads, a real fork and real interpreter exits in subprocesses.
"""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import httpx
import pytest

import conveyor

from ._httpserver import HttpServer


@pytest.fixture(scope="module")
def server() -> Iterator[HttpServer]:
    srv = HttpServer().start()
    yield srv
    srv.stop()


def test_a_module_level_httpx_client_serves_successive_maps(server: HttpServer) -> None:
    client = httpx.AsyncClient()   # made outside any loop, as at a module's top level

    async def fetch(x: int) -> str:
        return (await client.get(f"{server.url}/echo/{x}")).text

    server.ports.clear()
    try:
        assert list(conveyor.map(fetch, range(20), workers=4)) == [str(x) for x in range(20)]
        first = set(server.ports)
        server.ports.clear()
        assert list(conveyor.map(fetch, range(20, 40), workers=4)) == \
            [str(x) for x in range(20, 40)]
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

    try:
        for start in (0, 20, 40):
            assert list(conveyor.map(fetch, range(start, start + 20), workers=4)) == \
                [str(x) for x in range(start, start + 20)]
    finally:
        if "session" in holder:
            conveyor.run_coroutine(holder["session"].close())
