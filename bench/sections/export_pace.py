"""7. Export pace: event log → OTLP request bytes, ours against the OTel SDK path doing the same work.

Both sides derive the spans from the events with the same builder (``RunTraceBuilder``); ours
then writes them straight as OTLP bytes (``otlp_encode``), the SDK path creates each span
through the SDK tracer API (same ids, names, attributes, events, status, resource and scope)
and encodes the finished spans with the OTLP exporter's encoder. Both batch 512 spans a request
and stop at the serialized request bytes: nothing is POSTed (the workers' gzipped bodies are
handed back and dropped), so the rows measure read + decode + build + encode, not a receiver.
Where ours reads the world, the baseline reads it too, with the same reader (``run_logs`` over
chunks of listed runs, as the export workers read), in the same run. These are the only export
rows of the bench (section 1's older pipeline rows, whose baseline started from built spans, are gone).

Rows: build + encode of events already in memory (one core); read + build + encode from
world-local and world-postgres in one process; and ``wft export``'s multi-process path
(``export_in_processes``: listing here, workers reading, building, encoding and gzipping, bodies
handed back to this process, which drops them instead of POSTing), against the one-process SDK
path. Each figure is the best of a few runs (noise on a shared machine only ever adds time);
CPU-seconds of this process and its children are reported beside wall time.
"""

from __future__ import annotations

import asyncio
import os
import resource as rusage
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry import trace as otel
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from telemetry.backends import BackendConfig, open_backend
from telemetry.chunking import CHUNK_RUNS_MAX
from telemetry.commands.export_parallel import default_jobs, export_in_processes
from telemetry.export import run_resource
from telemetry.otlp_encode import OtlpEncoder, RequestBatcher
from telemetry.reading import all_runs, event_log, run_logs
from telemetry.runtrace import SCOPE, RunTraceBuilder, SpanData

from .common import psql_runner, verdict

RUNS = 5000
BATCH = 512
RATIO_TARGET = 2.0
PACE_TARGET = 40_000  # events/s from each world, all cores


# -- the two paths from built spans to request bytes ------------------------------------------------
class _ChosenIds(IdGenerator):
    """The SDK tracer takes its ids from here: the builder's deterministic ones, so both paths
    produce the same spans."""

    def __init__(self) -> None:
        self.trace_id = 1
        self.span_id = 1

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id


class SdkPath:
    """Spans through the SDK tracer API, encoded by the OTLP exporter's encoder, 512 a request."""

    def __init__(self, resource: Resource) -> None:
        self.ids = _ChosenIds()
        self.memory = InMemorySpanExporter()
        provider = TracerProvider(resource=resource, id_generator=self.ids)
        provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = provider.get_tracer(SCOPE.name, SCOPE.version)
        self.pending = 0
        self.bodies: list[bytes] = []

    def add(self, spans: list[SpanData]) -> None:
        for s in spans:
            self.ids.trace_id, self.ids.span_id = s.trace_id, s.span_id
            parent = None
            if s.parent_span_id is not None:
                context = SpanContext(
                    s.trace_id, s.parent_span_id, is_remote=s.parent_is_remote, trace_flags=TraceFlags(1)
                )
                parent = otel.set_span_in_context(otel.NonRecordingSpan(context))
            span = self.tracer.start_span(
                s.name, context=parent, kind=SpanKind.INTERNAL, attributes=s.attributes, start_time=s.start_time
            )
            for e in s.events:
                span.add_event(e.name, e.attributes, timestamp=e.timestamp)
            if s.status is not None:
                span.set_status(s.status)
            span.end(end_time=s.end_time)
            self.pending += 1
            if self.pending >= BATCH:
                self.flush()

    def flush(self) -> None:
        if self.pending:
            self.bodies.append(encode_spans(self.memory.get_finished_spans()).SerializeToString())
            self.memory.clear()
            self.pending = 0


class OurPath:
    def __init__(self, resource: Resource) -> None:
        self.batcher = RequestBatcher(OtlpEncoder(resource), BATCH)
        self.bodies: list[bytes] = []

    def add(self, spans: list[SpanData]) -> None:
        self.bodies += [body for body, _ in self.batcher.add(spans)]

    def flush(self) -> None:
        last = self.batcher.flush()
        if last is not None:
            self.bodies.append(last[0])


def _build(run: Any, events: list[Any], resource: Resource) -> list[SpanData]:
    builder = RunTraceBuilder(run.run_id, run, resource=resource)
    builder.feed(events)
    return builder.trace().data


def _in_memory(loaded: list[tuple[Any, list[Any]]], path: Callable[[], Any], resource: Resource) -> Any:
    out = path()
    for run, events in loaded:
        out.add(_build(run, events, resource))
    out.flush()
    return out


def _from_world(config: BackendConfig, path: Callable[[], Any], resource: Resource) -> int:
    """Read every run's log from the world as ``wft export``'s workers do (``run_logs`` over
    chunks of ``CHUNK_RUNS_MAX`` listed runs, the size of most of their tasks: world-postgres reads
    a chunk's logs in one statement) and build + encode it. Ours and the SDK path both read this way."""

    async def go() -> int:
        world = open_backend(config)
        out = path()
        events = 0

        async def chunk(runs: list[Any]) -> int:
            count = 0
            async for run, log in run_logs(world, runs):
                if isinstance(log, Exception):
                    raise log
                count += len(log)
                out.add(_build(run, log, resource))
            return count

        try:
            runs: list[Any] = []
            async for run in all_runs(world, page_size=500, resolve_data="none"):
                runs.append(run)
                if len(runs) >= CHUNK_RUNS_MAX:
                    events += await chunk(runs)
                    runs = []
            events += await chunk(runs)
            out.flush()
        finally:
            await world.close()
        return events

    return asyncio.run(go())


class _NullSink:
    """Takes the workers' request bodies and drops them (the POST is not what is measured here)."""

    batch_size = BATCH

    def __init__(self) -> None:
        self.bodies = 0

    def post(self, body: bytes, spans: int, *, gzipped: bool = False) -> None:
        self.bodies += 1


class _Tally:
    def __init__(self) -> None:
        self.runs = self.spans = self.events = self.errors = 0
        self.skipped: list[tuple[str, str, str]] = []

    def skip(self, run_id: str, path: str, reason: str) -> None:
        self.skipped.append((run_id, path, reason))


def _all_cores(config: BackendConfig, resource: Resource, jobs: int) -> int:
    async def go() -> int:
        world = open_backend(config)
        tally = _Tally()
        try:
            await export_in_processes(world, config, _NullSink(), resource, tally, jobs=jobs)
        finally:
            await world.close()
        if tally.errors or tally.skipped:
            raise RuntimeError(f"export_in_processes: {tally.errors} errors, skipped {tally.skipped[:1]}")
        return tally.events

    return asyncio.run(go())


# -- measuring ------------------------------------------------------------------------------------
def _cpu() -> float:
    own, children = rusage.getrusage(rusage.RUSAGE_SELF), rusage.getrusage(rusage.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _best(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, float, Any]:
    """(best wall seconds, CPU seconds of that run, its result)."""
    best = (float("inf"), 0.0, None)
    for _ in range(repeat):
        cpu, started = _cpu(), time.perf_counter()
        result = fn()
        wall = time.perf_counter() - started
        if wall < best[0]:
            best = (wall, _cpu() - cpu, result)
    return best


def _same_spans(ours: list[bytes], theirs: list[bytes]) -> None:
    def ids(bodies: list[bytes]) -> list[bytes]:
        out = []
        for body in bodies:
            request = ExportTraceServiceRequest.FromString(body)
            out += [s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return sorted(out)

    if ids(ours) != ids(theirs):
        raise RuntimeError("the SDK path and ours built different spans: the comparison would be unfair")


def _row(name: str, ours: float, ours_note: str, base: float, base_note: str, target: str, ok: str) -> dict[str, str]:
    return {
        "benchmark": f"7. {name}",
        "ours": f"{ours:,.0f} events/s{ours_note}",
        "baseline": f"{base:,.0f} events/s{base_note}",
        "ratio": f"{ours / base:.2f}×",
        "target": target,
        "verdict": ok,
    }


def _both(ours: float, base: float) -> str:
    pace = verdict(ours, PACE_TARGET, higher_is_better=True, unit="events/s")
    ratio = verdict(ours / base, RATIO_TARGET, higher_is_better=True, unit="×")
    if pace == ratio == "met":
        return "met"
    return "; ".join(v if v != "met" else f"{what} met" for v, what in ((pace, "pace"), (ratio, "ratio")))


def _world_rows(label: str, config: BackendConfig, resource: Resource, jobs: int) -> list[dict[str, str]]:
    events = _from_world(config, lambda: OurPath(resource), resource)  # warm the page cache / buffers
    base_wall, base_cpu, _ = _best(lambda: _from_world(config, lambda: SdkPath(resource), resource), repeat=2)
    one_wall, one_cpu, _ = _best(lambda: _from_world(config, lambda: OurPath(resource), resource))
    all_wall, all_cpu, done = _best(lambda: _all_cores(config, resource, jobs))
    if done != events:
        raise RuntimeError(f"{label}: the workers exported {done} events of {events}")
    base = events / base_wall
    base_note = (
        f" (OTel SDK path, read + build + SDK spans + encode, one process; {base_cpu / events * 1e6:.0f} µs CPU/event)"
    )
    one = events / one_wall
    every = events / all_wall
    return [
        _row(
            f"{label}, {events:,} events: read + build + encode, one process",
            one,
            f" ({one_cpu / events * 1e6:.0f} µs CPU/event)",
            base,
            base_note,
            f"≥ {RATIO_TARGET:g}× the SDK path",
            verdict(one / base, RATIO_TARGET, higher_is_better=True, unit="×"),
        ),
        _row(
            f"{label}, {events:,} events: `wft export` workers ({jobs} processes: read + build + encode + gzip)",
            every,
            f" ({all_cpu / events * 1e6:.0f} µs CPU/event, all processes)",
            base,
            base_note,
            f"≥ {PACE_TARGET:,} events/s and ≥ {RATIO_TARGET:g}×",
            _both(every, base),
        ),
    ]


def run(harness_out: Path) -> list[dict[str, str]]:
    jobs = default_jobs()
    tmp = Path(tempfile.mkdtemp(prefix="wft-bench-export-"))
    try:
        rows = _measure(harness_out, tmp, jobs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[bench] export pace: {os.cpu_count()} CPUs, {jobs} workers", flush=True)
    return rows


def _measure(harness_out: Path, tmp: Path, jobs: int) -> list[dict[str, str]]:
    from synth import scale_local, scale_postgres

    from tests.pgserver import destroy, start_pg

    rows: list[dict[str, str]] = []
    scale_local(harness_out / "local-data", tmp / "local", RUNS)
    local = BackendConfig("local", data_dir=str(tmp / "local"))
    resource = run_resource("local")

    async def load() -> list[tuple[Any, list[Any]]]:
        world = open_backend(local)
        try:
            return [(r, await event_log(world, r.run_id)) async for r in all_runs(world, page_size=500)]
        finally:
            await world.close()

    loaded = asyncio.run(load())
    events = sum(len(log) for _, log in loaded)
    ours_out = _in_memory(loaded, lambda: OurPath(resource), resource)
    sdk_out = _in_memory(loaded, lambda: SdkPath(resource), resource)
    _same_spans(ours_out.bodies, sdk_out.bodies)
    ours_wall, ours_cpu, _ = _best(lambda: _in_memory(loaded, lambda: OurPath(resource), resource), repeat=5)
    base_wall, base_cpu, _ = _best(lambda: _in_memory(loaded, lambda: SdkPath(resource), resource), repeat=5)
    ours, base = events / ours_wall, events / base_wall
    rows.append(
        _row(
            f"{events:,} events in memory: build + encode to OTLP bytes",
            ours,
            f" ({ours_cpu / events * 1e6:.1f} µs CPU/event)",
            base,
            f" (OTel SDK path: build + SDK tracer spans + OTLP encoder; {base_cpu / events * 1e6:.1f} µs CPU/event)",
            f"≥ {RATIO_TARGET:g}×",
            verdict(ours / base, RATIO_TARGET, higher_is_better=True, unit="×"),
        )
    )
    rows += _world_rows(f"world-local {RUNS:,} runs", local, resource, jobs)

    server = start_pg()
    try:
        psql = psql_runner(server)
        psql("-f", str(harness_out / "postgres" / "world.sql"))
        scale_postgres(psql, RUNS // 11 + 1)
        rows += _world_rows(
            f"world-postgres {RUNS:,}+ runs", BackendConfig("postgres", url=server.url), run_resource("postgres"), jobs
        )
    finally:
        destroy(server)
    return rows
