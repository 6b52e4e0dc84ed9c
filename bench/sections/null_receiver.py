"""Baseline for the ingest benchmark: an OTLP/HTTP endpoint that parses and discards (no store).

``null_receiver.py PORT count`` also counts what it received (requests, spans, and the events
behind them: the ``workflow.events.count`` of each run span) and when the last request arrived
(``time.monotonic()``, comparable across processes on Linux), served as JSON on ``GET /stats``:
how the scaling benchmark sees how far a ``wft export`` got without touching its output.
"""

import sys
import time

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

RESPONSE = ExportTraceServiceResponse().SerializeToString()
EVENTS_COUNT = "workflow.events.count"
stats = {"requests": 0, "spans": 0, "events": 0, "last": 0.0}


async def traces(request: web.Request) -> web.Response:
    message = ExportTraceServiceRequest()
    message.ParseFromString(await request.read())
    return web.Response(body=RESPONSE, content_type="application/x-protobuf")


async def counted_traces(request: web.Request) -> web.Response:
    message = ExportTraceServiceRequest()
    message.ParseFromString(await request.read())
    for resource_spans in message.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            stats["spans"] += len(scope_spans.spans)
            for span in scope_spans.spans:
                for attribute in span.attributes:
                    if attribute.key == EVENTS_COUNT:
                        stats["events"] += attribute.value.int_value
                        break
    stats["requests"] += 1
    stats["last"] = time.monotonic()
    return web.Response(body=RESPONSE, content_type="application/x-protobuf")


counting = sys.argv[2:] == ["count"]
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/traces", counted_traces if counting else traces)
app.router.add_get("/healthz", lambda r: web.json_response({"ok": True}))
app.router.add_get("/stats", lambda r: web.json_response(stats))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
