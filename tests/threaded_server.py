"""Serve an aiohttp app on its own thread and loop, for receivers that tests talk to."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from aiohttp import web


def serve_in_thread(app: web.Application, *, auto_decompress: bool = True) -> tuple[str, Callable[[], None]]:
    """(base URL on a free loopback port, stop())."""
    ready = threading.Event()
    holder: dict = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        runner = web.AppRunner(app, auto_decompress=auto_decompress, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        holder["url"] = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)

    def stop() -> None:
        holder["loop"].call_soon_threadsafe(holder["loop"].stop)
        thread.join(10)

    return holder["url"], stop
