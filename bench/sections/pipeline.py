"""1. Event log → OTLP bytes, events/s on one core, world-local and world-postgres (1,000 runs
copied from real harness runs), against the same spans built through the OpenTelemetry SDK
tracer API and encoded by the OTLP exporter's encoder."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from opentelemetry import trace as otel
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telemetry.backends.local import LocalWorld
from telemetry.backends.postgres import PostgresWorld
from telemetry.reading import all_runs, event_log, run_trace
from telemetry.runtrace import build_run_trace

from .common import best_of, psql_runner, verdict

RUNS = 1000
TARGET = 100_000


def _read_build_encode(world) -> int:
    async def go() -> int:
        events = 0
        async for run in all_runs(world, page_size=500):
            built = await run_trace(world, run)
            encode_spans(built.spans).SerializeToString()
            events += built.spans[0].attributes.get("workflow.events.count", 0) if built.spans else 0
        return events

    return asyncio.run(go())


def _load(world) -> list:
    async def go():
        return [(run, await event_log(world, run.run_id)) async for run in all_runs(world, page_size=500)]

    return asyncio.run(go())


def _sdk_baseline(built_runs: list) -> None:
    """The same spans, built through the SDK's tracer API and encoded by the OTLP encoder."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("baseline")
    for spans in built_runs:
        for s in spans:
            parent = otel.set_span_in_context(otel.NonRecordingSpan(s.parent)) if s.parent else None
            live = tracer.start_span(
                s.name, context=parent, kind=s.kind, attributes=s.attributes, start_time=s.start_time
            )
            for e in s.events:
                live.add_event(e.name, e.attributes, timestamp=e.timestamp)
            live.set_status(s.status)
            live.end(end_time=s.end_time)
        encode_spans(memory.get_finished_spans()).SerializeToString()
        memory.clear()


def _postgres_world(harness_out: Path):
    from synth import scale_postgres

    from tests.pgserver import start_pg

    server = start_pg()
    psql = psql_runner(server)
    psql("-f", str(harness_out / "postgres" / "world.sql"))
    scale_postgres(psql, RUNS // 11 + 1)
    return server


def run(harness_out: Path) -> list[dict]:
    from synth import scale_local

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="wft-bench-world-"))
    events = scale_local(harness_out / "local-data", tmp / "local", RUNS)
    local = LocalWorld(tmp / "local")
    loaded = _load(local)
    built = [build_run_trace(run.run_id, evs, run).spans for run, evs in loaded]

    def build_encode():
        for run, evs in loaded:
            encode_spans(build_run_trace(run.run_id, evs, run).spans).SerializeToString()

    ours_mem = events / best_of(build_encode)
    base = events / best_of(lambda: _sdk_baseline(built))
    ours_local = events / best_of(lambda: _read_build_encode(local), repeat=2)
    rows.append(
        {
            "benchmark": "1. event log → OTLP bytes, events in memory (build + encode)",
            "ours": f"{ours_mem:,.0f} events/s",
            "baseline": f"{base:,.0f} events/s (OTel SDK tracer API + OTLP encoder)",
            "ratio": f"{ours_mem / base:.2f}×",
            "target": f"≥ {TARGET:,} events/s",
            "verdict": verdict(ours_mem, TARGET, higher_is_better=True, unit="events/s"),
        }
    )
    rows.append(
        {
            "benchmark": f"1. world-local {RUNS} runs: read + decode + build + encode",
            "ours": f"{ours_local:,.0f} events/s",
            "baseline": f"{base:,.0f} events/s",
            "ratio": f"{ours_local / base:.2f}×",
            "target": f"≥ {TARGET:,} events/s",
            "verdict": verdict(ours_local, TARGET, higher_is_better=True, unit="events/s"),
        }
    )
    server = _postgres_world(harness_out)
    try:
        world = PostgresWorld(server.url)
        pg_events = _read_build_encode(world)
        ours_pg = pg_events / best_of(lambda: _read_build_encode(world), repeat=2)
        asyncio.run(world.close())
    finally:
        from tests.pgserver import destroy

        destroy(server)
    rows.append(
        {
            "benchmark": f"1. world-postgres {RUNS}+ runs: read + decode + build + encode",
            "ours": f"{ours_pg:,.0f} events/s",
            "baseline": f"{base:,.0f} events/s",
            "ratio": f"{ours_pg / base:.2f}×",
            "target": f"≥ {TARGET:,} events/s",
            "verdict": verdict(ours_pg, TARGET, higher_is_better=True, unit="events/s"),
        }
    )
    return rows
