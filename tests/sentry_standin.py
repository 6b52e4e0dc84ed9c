"""A stand-in for an upstream Sentry server (none can run here): it records what arrives."""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

import brotli
from aiohttp import web

from .threaded_server import serve_in_thread


@dataclass
class Arrival:
    path: str
    query: str
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> bytes:
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            return gzip.decompress(self.raw)
        if encoding == "deflate":
            return zlib.decompress(self.raw)
        if encoding == "br":  # sentry-sdk's own choice wherever brotli is importable
            return bytes(brotli.decompress(self.raw))
        return self.raw

    def events(self) -> list[dict[str, Any]]:
        if self.path.endswith("/store/"):
            return [json.loads(self.body)]
        from telemetry.sentry_envelope import parse_envelope

        _, items = parse_envelope(self.body)
        return [json.loads(i.payload) for i in items if i.type == "event"]


@dataclass
class SentryUpstreamStandIn:
    url: str = ""
    arrivals: list[Arrival] = field(default_factory=list)
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def dsn(self, project: str = "7", key: str = "upstreamkey") -> str:
        host = self.url.split("://", 1)[1]
        return f"http://{key}@{host}/{project}"

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for a in self.arrivals for e in a.events()]


def start_standin() -> tuple[SentryUpstreamStandIn, Any]:
    standin = SentryUpstreamStandIn()

    async def receive(request: web.Request) -> web.Response:
        raw = await request.read()
        with standin.lock:
            if standin.fail_next > 0:
                standin.fail_next -= 1
                return web.Response(status=503)
            standin.arrivals.append(Arrival(request.path, request.query_string, dict(request.headers), raw))
        return web.json_response({"id": "x"})

    app = web.Application(client_max_size=32 * 1024 * 1024)  # real Sentry takes envelopes of tens of MB
    app.router.add_post("/api/{project}/envelope/", receive)
    app.router.add_post("/api/{project}/store/", receive)
    standin.url, stop = serve_in_thread(app, auto_decompress=False)
    return standin, stop
