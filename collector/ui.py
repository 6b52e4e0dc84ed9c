"""The built-in UI: a runs page and a run page, served from files shipped in the package
(no CDN: it works offline). Pages hold no data; they read the JSON API."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

__all__ = ["routes"]

STATIC = Path(__file__).parent / "static"


def _page(name: str):
    async def handler(request: web.Request) -> web.Response:
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    return handler


async def _trace(request: web.Request) -> web.Response:
    """``/traces/<trace id>`` opens the run that trace belongs to (the page resolves it)."""
    return web.FileResponse(STATIC / "run.html", headers={"Cache-Control": "no-cache"})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/", _page("runs.html")),
        web.get("/runs/{run_id}", _page("run.html")),
        web.get("/traces/{trace_id}", _trace),
        web.static("/static", STATIC, append_version=True),
    ]
