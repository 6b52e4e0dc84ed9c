"""Real seed bodies for the fuzzer, captured from the real clients as they send them.

- OTLP protobuf from the real OpenTelemetry SDK exporter (``OTLPSpanExporter``) and from
  ``wft export`` of the TS SDK harness's world-local data, each captured by a loopback receiver
  (an export request is also split per trace, so each run is a seed of its own);
- OTLP-JSON: the same requests in the OTLP-JSON mapping (hex ids), as JSON exporters send them;
- Sentry envelopes from the real ``sentry-sdk`` client (exceptions benign and real, messages, a
  transaction, an attachment, tags, contexts, breadcrumbs), captured the same way.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotli
import sentry_sdk
from aiohttp import web
from google.protobuf import json_format
from opentelemetry._logs import LogRecord
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from ..sdk_spans import RUN, make_sdk_spans
from ..test_sentry import DIAG, SEED
from ..threaded_server import serve_in_thread

_DECODE: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "br": lambda raw: bytes(brotli.decompress(raw)),
}


@dataclass
class Capture:
    """A loopback server that keeps every body it is sent (decompressed) and answers success."""

    url: str = ""
    bodies: list[tuple[str, bytes]] = field(default_factory=list)  # (path, body)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (path and query, headers)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Capture:
        async def receive(request: web.Request) -> web.Response:
            raw = await request.read()
            encoding = request.headers.get("Content-Encoding", "")
            decode = _DECODE.get(encoding)  # sentry-sdk sends br wherever brotli is importable
            body = decode(raw) if decode else raw
            with self.lock:
                self.bodies.append((request.path, body))
                self.requests.append((request.path_qs, dict(request.headers)))
            if request.path.endswith("/v1/traces"):
                return web.Response(
                    body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
                )
            return web.json_response({"id": "0" * 32})

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", receive)
        app.router.add_post("/v1/metrics", receive)
        app.router.add_post("/v1/logs", receive)
        app.router.add_post("/api/{project}/envelope/", receive)
        app.router.add_post("/api/{project}/store/", receive)
        self.url, self._stop = serve_in_thread(app, auto_decompress=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop()


def _varied_sdk_spans() -> Any:
    """Real SDK spans with every kind, links, events, an error and attributes of each type."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "fuzz-seed", "deployment.environment": "ci"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("seed-scope", "1.0")
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes={"workflow.run.id": RUN}) as root:
        context = root.get_span_context()
        for kind in (SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.INTERNAL):
            with tracer.start_as_current_span(
                f"child {kind.name}",
                kind=kind,
                links=[Link(context, {"link.why": "follows"})],
                attributes={"s": "x", "i": -7, "f": 0.25, "b": False, "ints": [1, 2], "strs": ["p", "q"]},
            ) as child:
                child.add_event("checkpoint", {"at": 3, "what": "half", "ratio": 0.5})
        with tracer.start_as_current_span(
            "http PUT", attributes={"http.request.method": "PUT", "url.full": f"https://x/v2/runs/{RUN}/stream/s"}
        ) as failing:
            failing.set_attribute("http.response.status_code", 409)
            failing.record_exception(ValueError(DIAG))
            failing.set_status(Status(StatusCode.ERROR, DIAG))
    provider.shutdown()
    return memory.get_finished_spans()


def sdk_protobuf_bodies() -> list[bytes]:
    """What the real ``OTLPSpanExporter`` sends for a few real batches."""
    with Capture() as capture:
        exporter = OTLPSpanExporter(endpoint=f"{capture.url}/v1/traces", timeout=10)
        for batch in (make_sdk_spans(1), make_sdk_spans(4, service="shop"), _varied_sdk_spans()):
            assert exporter.export(batch).name == "SUCCESS"
        exporter.shutdown()
    return [body for _, body in capture.bodies]


def metrics_and_logs_bodies() -> list[tuple[str, bytes]]:
    """What the real OTel metric and log exporters send (path, body): the relay's input."""
    with Capture() as capture:
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{capture.url}/v1/metrics", timeout=10), export_interval_millis=60_000
        )
        meters = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "fuzz-seed"}))
        meter = meters.get_meter("seed-scope", "1.0")
        meter.create_counter("workflow.steps").add(3, {"workflow.name": "demo", "ok": True})
        meter.create_histogram("workflow.step.duration", unit="ms").record(12.5, {"step": "a"})
        meter.create_up_down_counter("workflow.running").add(-1)
        meters.force_flush(10_000)
        meters.shutdown()
        logs = LoggerProvider(resource=Resource.create({"service.name": "fuzz-seed"}))
        logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{capture.url}/v1/logs")))
        logs.get_logger("seed-scope").emit(LogRecord(body=DIAG, attributes={"workflow.run.id": RUN, "n": 1}))
        logs.shutdown()
    return list(capture.bodies)


def export_protobuf_bodies(local_data: Path) -> list[bytes]:
    """What ``wft export`` sends for the harness's world-local runs (one request per run)."""
    with Capture() as capture:
        result = subprocess.run(
            [sys.executable, "-m", "telemetry", "export", "--world", "local", "--dir", str(local_data)]
            + ["--otlp", capture.url],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OTEL_SDK_DISABLED": "true"},
        )
        assert result.returncode == 0, result.stderr[-2000:]
    bodies = [body for _, body in capture.bodies]
    assert bodies, "wft export sent nothing"
    return [part for body in bodies for part in _per_trace(body)]


def _per_trace(body: bytes) -> list[bytes]:
    """The export request and one request per trace (per run) of it, however the exporter batched
    them: more seeds of different shapes, each still what the exporter wrote."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    traces = sorted({s.trace_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans})
    if len(traces) <= 1:
        return [body]
    parts = [body]
    for trace_id in traces:
        part = ExportTraceServiceRequest()
        part.CopyFrom(request)
        for resource_spans in part.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                kept = [s for s in scope_spans.spans if s.trace_id == trace_id]
                del scope_spans.spans[:]
                scope_spans.spans.extend(kept)
        parts.append(part.SerializeToString())
    return parts


def otlp_json(body: bytes) -> bytes:
    """A protobuf request in the OTLP-JSON mapping (hex ids, camelCase), as JSON exporters send it."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    document = json_format.MessageToDict(request)
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for holder in [span, *span.get("links", [])]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in holder:
                            holder[key] = _b64_to_hex(holder[key])
    return json.dumps(document).encode()


def _b64_to_hex(value: str) -> str:
    import base64

    return base64.b64decode(value).hex()


def sentry_bodies(token: str) -> list[tuple[str, bytes]]:
    """(path, body) of what the real sentry-sdk sends: envelopes and what they carry."""
    with Capture() as capture:
        host = capture.url.split("://", 1)[1]
        sentry_sdk.init(
            dsn=f"http://{token}@{host}/42",
            default_integrations=False,
            traces_sample_rate=1.0,
            release="fuzz@1.0",
            environment="ci",
        )
        try:
            sentry_sdk.set_tag("workflow.run.id", RUN)
            sentry_sdk.set_context("workflow", {"run_id": RUN, "nested": {"a": [1, 2, {"b": None}]}})
            sentry_sdk.add_breadcrumb(category="step", message="step started", data={"attempt": 2})
            for error in (Exception(DIAG), Exception(SEED), RuntimeError("a real failure"), KeyError("missing")):
                try:
                    raise error
                except Exception:
                    sentry_sdk.capture_exception()
            sentry_sdk.capture_message("a plain message with a run id " + RUN)
            with sentry_sdk.new_scope() as scope:
                scope.add_attachment(bytes=b"attached bytes\n\x00\x01", filename="a.bin")
                scope.set_extra("deep", {"x": [[["y"]]]})
                sentry_sdk.capture_message("with an attachment", level="warning")
            with sentry_sdk.start_transaction(name="fuzz transaction", op="task"):
                with sentry_sdk.start_span(op="step", name="inner"):
                    pass
            sentry_sdk.flush(10)
        finally:
            sentry_sdk.get_client().close()
            sentry_sdk.init()
    bodies = list(capture.bodies)
    assert len(bodies) >= 6, bodies
    return bodies
