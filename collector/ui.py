"""The built-in UI: a runs page and a run page, served from files shipped in the package
(no CDN: it works offline). Pages hold no data; they read the JSON API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

__all__ = ["routes"]

#: one path segment, matched percent-encoded (a run id may hold "{" or "/")
SEGMENT = "[^/]+"

STATIC = Path(__file__).parent / "static"


def _page(name: str) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    return handler


async def _trace(request: web.Request) -> web.FileResponse:
    """``/traces/<trace id>`` opens the run that trace belongs to (the page resolves it)."""
    return web.FileResponse(STATIC / "run.html", headers={"Cache-Control": "no-cache"})


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/", _page("runs.html")),
        web.get(f"/runs/{{run_id:{SEGMENT}}}", _page("run.html")),
        web.get(f"/traces/{{trace_id:{SEGMENT}}}", _trace),
        web.static("/static", STATIC, append_version=True),
    ]
