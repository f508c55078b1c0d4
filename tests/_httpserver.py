"""A real HTTP server on 127.0.0.1 (aiohttp.web), in a thread with its own event loop.

Tests of clients shared across maps talk to it: it answers ``GET /echo/{x}``
with ``x`` and records the client port of every request, so a test can see
that a later map reused a connection an earlier one opened.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

__all__ = ["HttpServer"]


class HttpServer:
    def __init__(self) -> None:
        self.ports: list[int] = []   # the client's port, one per request
        self.url = ""
        self._loop = asyncio.new_event_loop()
        # Not named conveyor-*: it is the test's, not a thread conveyor leaves behind.
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-http-server",
                                        daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> HttpServer:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._up(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _up(self) -> str:
        app = web.Application()
        app.router.add_get("/echo/{x}", self._echo)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _echo(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            self.ports.append(peer[1])
        return web.Response(text=request.match_info["x"])
