"""3. What ``traced`` adds to a world call: with a real SDK tracer provider, with none, and
compared with opentelemetry-instrumentation-aiohttp-client on an equivalent aiohttp call."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from telemetry.world import traced

from .common import verdict

CALLS = 100_000
HTTP_CALLS = 1_500


class _Drop(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS


class _Runs:
    async def get(self, run_id: str, *, resolve_data: str = "all") -> str:
        return run_id


class _World:
    runs = _Runs()
    steps = events = hooks = streams = object()


def _per_call_ns(call, n: int) -> float:
    async def loop() -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter_ns()
            for _ in range(n):
                await call("wrun_01M80NBG3DC60X48Z6Z4PYTN4R")
            best = min(best, (time.perf_counter_ns() - started) / n)
        return best

    return asyncio.run(loop())


def _http_per_call_ns(url: str, instrument: TracerProvider | None) -> float:
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

    instrumentor = AioHttpClientInstrumentor()
    if instrument is not None:
        instrumentor.instrument(tracer_provider=instrument)

    async def loop() -> float:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # warm the connection pool
                async with session.get(url) as r:
                    await r.read()
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter_ns()
                for _ in range(HTTP_CALLS):
                    async with session.get(url) as r:
                        await r.read()
                best = min(best, (time.perf_counter_ns() - started) / HTTP_CALLS)
            return best

    try:
        return asyncio.run(loop())
    finally:
        if instrument is not None:
            instrumentor.uninstrument()


def _server() -> str:
    ready = threading.Event()
    holder = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/runs/{id}", lambda r: web.json_response({"runId": r.match_info["id"]}))
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        loop.run_until_complete(site.start())
        holder["url"] = f"http://127.0.0.1:{sock.getsockname()[1]}/runs/wrun_x"
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait(10)
    return holder["url"]


def run(harness_out: Path) -> list[dict]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Drop()))
    raw = _per_call_ns(_World.runs.get, CALLS)
    off = _per_call_ns(traced(_World(), peer_service="world-local").runs.get, CALLS)  # no global provider registered
    on = _per_call_ns(traced(_World(), peer_service="world-local", tracer_provider=provider).runs.get, CALLS // 5)
    url = _server()
    http_raw = _http_per_call_ns(url, None)
    http_on = _http_per_call_ns(url, provider)
    ours_on, theirs = on - raw, http_on - http_raw
    ours_off = off - raw
    return [
        {
            "benchmark": "3. traced world call, tracing on (SDK provider, spans exported to a null exporter)",
            "ours": f"+{ours_on / 1000:.1f} µs per call",
            "baseline": f"+{theirs / 1000:.1f} µs per call (aiohttp-client instrumentation;"
            f" raw HTTP call {http_raw / 1000:.0f} µs)",
            "ratio": f"{ours_on / theirs:.2f}×",
            "target": "no worse than aiohttp-client instrumentation",
            "verdict": "met" if ours_on <= theirs else f"**missed** by {ours_on / theirs:.1f}×",
        },
        {
            "benchmark": "3. traced world call, no tracer provider",
            "ours": f"+{ours_off:.0f} ns per call",
            "baseline": f"{raw:.0f} ns raw await of the same call",
            "ratio": f"{off / raw:.2f}×",
            "target": "< 1 µs",
            "verdict": verdict(ours_off, 1000, higher_is_better=False, unit="ns"),
        },
    ]
