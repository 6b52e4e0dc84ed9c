"""A small OTLP/HTTP receiver for tests: aiohttp in a thread, decoding with opentelemetry-proto."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from .threaded_server import serve_in_thread


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _attrs(items) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start: int
    end: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: list[tuple[str, int, dict[str, Any]]]
    resource: dict[str, Any]
    scope: str


@dataclass
class Receiver:
    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    fail_next: int = 0  # answer this many requests with 503 first
    encodings: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)  # the Authorization header of each request taken
    lock: threading.Lock = field(default_factory=threading.Lock)

    def by_id(self) -> dict[str, ReceivedSpan]:
        with self.lock:
            return {s.span_id: s for s in self.spans}

    def clear(self) -> None:
        with self.lock:
            self.spans.clear()


def decode_request(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=s.kind,
                        start=s.start_time_unix_nano,
                        end=s.end_time_unix_nano,
                        attributes=_attrs(s.attributes),
                        status_code=s.status.code,
                        status_message=s.status.message,
                        events=[(e.name, e.time_unix_nano, _attrs(e.attributes)) for e in s.events],
                        resource=resource,
                        scope=ss.scope.name,
                    )
                )
    return out


def start_receiver() -> tuple[Receiver, callable]:
    receiver = Receiver()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        with receiver.lock:
            receiver.requests += 1
            if receiver.fail_next > 0:
                receiver.fail_next -= 1
                return web.Response(status=503, headers={"Retry-After": "0"})
        if body[:2] == b"\x1f\x8b":  # aiohttp normally inflates Content-Encoding: gzip already
            body = gzip.decompress(body)
        with receiver.lock:
            receiver.encodings.append(request.headers.get("Content-Encoding", ""))
            receiver.authorizations.append(request.headers.get("Authorization"))
        spans = decode_request(body)
        with receiver.lock:
            receiver.spans.extend(spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    receiver.url, stop = serve_in_thread(app)
    return receiver, stop
