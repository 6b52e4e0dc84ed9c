"""OTLP/HTTP trace payloads: decode protobuf or OTLP-JSON into span records, encode replies.

Protobuf and JSON parsing are opentelemetry-proto's and protobuf's own. The one thing OTLP-JSON
does differently from protobuf's JSON mapping is trace/span ids as hex, which we convert (ids in
base64, as some exporters send them, are accepted too).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = [
    "PROTOBUF",
    "JSON",
    "BadPayload",
    "SpanRecord",
    "decode_request",
    "encode_response",
    "records_from",
    "any_value",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class BadPayload(ValueError):
    """The body is not a valid OTLP trace export request (answered with 400)."""


@dataclass
class SpanRecord:
    """One span as the store keeps it."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    links: list[dict[str, Any]]
    resource: dict[str, Any]
    scope: str
    source: str = "otlp"
    benign: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str | None:
        value = self.attributes.get("workflow.run.id")
        return value if isinstance(value, str) else None


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in items}


def _hex_ids_to_base64(node: Any) -> None:
    """OTLP-JSON ids are hex; protobuf's JSON parser wants base64 for bytes fields."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id") and isinstance(
                value, str
            ):
                node[key] = _id_to_base64(value, 16 if key in ("traceId", "trace_id") else 8)
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


def _id_to_base64(value: str, size: int) -> str:
    if value == "":
        return ""
    if len(value) == size * 2:
        try:
            return base64.b64encode(binascii.unhexlify(value)).decode()
        except binascii.Error:
            pass
    try:
        if len(base64.b64decode(value, validate=True)) == size:
            return value
    except binascii.Error:
        pass
    raise BadPayload(f"invalid id {value!r}: expected {size * 2} hex characters")


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as error:
            raise BadPayload(f"invalid protobuf: {error}") from None
        return request
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadPayload(f"invalid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadPayload("invalid OTLP JSON: the body must be an object")
    _hex_ids_to_base64(document)
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise BadPayload(f"invalid OTLP JSON: {error}") from None
    return request


def encode_response(content_type: str, rejected: int = 0, message: str = "") -> bytes:
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if content_type == JSON:
        return json_format.MessageToJson(response, indent=None).encode()
    return response.SerializeToString()


def _span_problem(span: Any) -> str | None:
    if len(span.trace_id) != 16 or span.trace_id == bytes(16):
        return "invalid trace id"
    if len(span.span_id) != 8 or span.span_id == bytes(8):
        return "invalid span id"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return "invalid parent span id"
    return None


def records_from(request: ExportTraceServiceRequest) -> tuple[list[SpanRecord], int, str]:
    """(valid spans, rejected count, reason): a span with a bad id is rejected, not the request."""
    records: list[SpanRecord] = []
    rejected = 0
    reason = ""
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                problem = _span_problem(span)
                if problem:
                    rejected += 1
                    reason = reason or problem
                    continue
                records.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status_code=span.status.code,
                        status_message=span.status.message,
                        attributes=_attributes(span.attributes),
                        events=[
                            {"name": e.name, "time_ns": e.time_unix_nano, "attributes": _attributes(e.attributes)}
                            for e in span.events
                        ],
                        links=[
                            {
                                "trace_id": link.trace_id.hex(),
                                "span_id": link.span_id.hex(),
                                "attributes": _attributes(link.attributes),
                            }
                            for link in span.links
                        ],
                        resource=resource,
                        scope=scope,
                    )
                )
    return records, rejected, reason


def set_attribute(span: Any, key: str, value: str) -> None:
    """Set a string attribute on a protobuf span (for forwarding what we changed)."""
    for kv in span.attributes:
        if kv.key == key:
            kv.value.string_value = value
            return
    span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
