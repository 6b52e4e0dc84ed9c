"""2. Collector ingest: OTLP protobuf over loopback from concurrent clients, spans/s durably stored,
p99 latency, peak RSS; then 10× overload. Baseline: a null receiver that only parses."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .common import free_port, start_server, verdict

SPANS_PER_REQUEST = 512
REQUESTS = 160
TARGET = 50_000


def _bodies(count: int) -> list[bytes]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("workflow")
    bodies = []
    for i in range(count):
        for j in range(SPANS_PER_REQUEST):
            with tracer.start_as_current_span(
                f"STEP s{j % 7}",
                attributes={
                    "workflow.run.id": f"wrun_{i:026d}",
                    "step.id": f"step_{j:026d}",
                    "step.attempt": 1,
                    "messaging.system": "vercel-queue",
                    "n": j,
                },
            ):
                pass
        bodies.append(encode_spans(memory.get_finished_spans()).SerializeToString())
        memory.clear()
    return bodies


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _load(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float], dict[int, int]]:
    queue = list(bodies)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def client(session: aiohttp.ClientSession) -> None:
        while queue:
            body = queue.pop()
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, statuses


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run(harness_out: Path) -> list[dict]:
    bodies = _bodies(REQUESTS)
    total = REQUESTS * SPANS_PER_REQUEST
    rows = []
    # baseline: parse-and-discard
    port = free_port()
    null = start_server([sys.executable, str(Path(__file__).with_name("null_receiver.py")), str(port)], port)
    try:
        seconds, _, _ = asyncio.run(_load(f"http://127.0.0.1:{port}/v1/traces", bodies, 8))
        base = total / seconds
    finally:
        null.terminate()
        null.wait(10)
    tmp = Path(tempfile.mkdtemp(prefix="wft-bench-ingest-"))
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "telemetry",
        "serve",
        "--no-world",
        "--port",
        str(port),
        "--store",
        str(tmp / "store.sqlite3"),
    ]
    server = start_server(argv, port)
    try:
        seconds, latencies, statuses = asyncio.run(_load(f"http://127.0.0.1:{port}/v1/traces", bodies, 8))
        ours = total / seconds
        rss = _peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    rows.append(
        {
            "benchmark": f"2. collector ingest, 8 clients × {SPANS_PER_REQUEST}-span requests, durably stored"
            " (1 server process)",
            "ours": f"{ours:,.0f} spans/s; p99 {_p99(latencies) * 1000:.0f} ms; peak RSS {rss:.0f} MiB;"
            f" {statuses.get(200, 0)}/{REQUESTS} ok",
            "baseline": f"{base:,.0f} spans/s (null receiver: parse only)",
            "ratio": f"{ours / base:.2f}×",
            "target": f"≥ {TARGET:,} spans/s per core",
            "verdict": verdict(ours, TARGET, higher_is_better=True, unit="spans/s"),
        }
    )
    # 10× overload against a small queue: refusals must be quick 503s and memory must stay bounded
    tmp2 = Path(tempfile.mkdtemp(prefix="wft-bench-overload-"))
    port = free_port()
    server = start_server(
        [*argv[:-4], "--port", str(port), "--store", str(tmp2 / "store.sqlite3"), "--max-pending-spans", "20000"], port
    )
    try:
        many = bodies * 5
        seconds, latencies, statuses = asyncio.run(_load(f"http://127.0.0.1:{port}/v1/traces", many, 80))
        rss_over = _peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    refused = sum(v for k, v in statuses.items() if k in (429, 503))
    rows.append(
        {
            "benchmark": "2. collector under 10× overload (80 clients, queue bound 20k spans)",
            "ours": f"{refused / len(many):.0%} answered 503 + Retry-After; peak RSS {rss_over:.0f} MiB;"
            f" p99 {_p99(latencies) * 1000:.0f} ms",
            "baseline": f"peak RSS {rss:.0f} MiB at 1× load",
            "ratio": f"{rss_over / rss:.2f}× RSS",
            "target": "RSS bounded",
            "verdict": "met" if rss_over < 3 * rss else f"**missed**: RSS grew {rss_over / rss:.1f}×",
        }
    )
    return rows
