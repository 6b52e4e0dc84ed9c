"""Baseline for the ingest benchmark: an OTLP/HTTP endpoint that parses and discards (no store)."""

import sys

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

RESPONSE = ExportTraceServiceResponse().SerializeToString()


async def traces(request: web.Request) -> web.Response:
    message = ExportTraceServiceRequest()
    message.ParseFromString(await request.read())
    return web.Response(body=RESPONSE, content_type="application/x-protobuf")


app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/traces", traces)
app.router.add_get("/healthz", lambda r: web.json_response({"ok": True}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
