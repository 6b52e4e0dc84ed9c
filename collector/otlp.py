"""OTLP/HTTP trace payloads: decode protobuf or OTLP-JSON into span records, encode replies.

Protobuf and JSON parsing are opentelemetry-proto's and protobuf's own. The one thing OTLP-JSON
does differently from protobuf's JSON mapping is trace/span ids as hex, which we convert (ids in
base64, as some exporters send them, are accepted too). A body that does not parse, however it
fails (nesting too deep included), is a ``BadPayload``; each span is then held to ``validate``'s
rules on its way to a ``SpanRecord``.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from .validate import (
    EVENT_ATTRIBUTE_COUNT_LIMIT,
    EVENT_COUNT_LIMIT,
    LIMITED,
    LINK_ATTRIBUTE_COUNT_LIMIT,
    LINK_COUNT_LIMIT,
    Invalid,
    SpanLimiter,
    check_ids,
    check_resource,
    check_run_id,
    check_times,
)

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
    """One ``AnyValue`` as JSON (within ``validate``'s limits; NaN and ±Infinity as strings)."""
    return SpanLimiter().value(v)


def _hex_ids_to_base64(document: Any) -> None:
    """OTLP-JSON ids are hex; protobuf's JSON parser wants base64 for bytes fields. (A loop, not
    recursion: a document only ``json.loads``' depth bounds must not overflow the stack here.)"""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _ID_KEYS and isinstance(value, str):
                    node[key] = _id_to_base64(value, 16 if key in ("traceId", "trace_id") else 8)
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))


_ID_KEYS = frozenset(("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"))


def _id_to_base64(value: str, size: int) -> str:
    if value == "":
        return ""
    if len(value) == size * 2:
        try:
            return base64.b64encode(binascii.unhexlify(value)).decode()
        except ValueError:  # binascii.Error, or not ASCII
            pass
    try:
        if len(base64.b64decode(value, validate=True)) == size:
            return value
    except ValueError:  # binascii.Error, or not ASCII
        pass
    raise BadPayload(f"invalid id {value!r}: expected {size * 2} hex characters")


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """The request in ``body``; ``BadPayload`` (a 400, with the reason) for anything unparseable."""
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as error:
            raise BadPayload(f"invalid protobuf: {error}") from None
        return request
    try:
        document = json.loads(body)
    except ValueError as error:  # not UTF-8, not JSON, a number of more digits than Python converts
        raise BadPayload(f"invalid JSON: {_first_line(str(error))}") from None
    except RecursionError:
        raise BadPayload("invalid JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise BadPayload("invalid OTLP JSON: the body must be an object")
    try:
        _hex_ids_to_base64(document)
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise BadPayload(f"invalid OTLP JSON: {_first_line(str(error))}") from None
    except RecursionError:
        raise BadPayload("invalid OTLP JSON: nested too deeply") from None
    return request


def _first_line(text: str, limit: int = 500) -> str:
    line = text.splitlines()[0] if text else text
    return line if len(line) <= limit else line[: limit - 1] + "…"


def encode_response(content_type: str, rejected: int = 0, message: str = "") -> bytes:
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    # protobuf ships no type information (see pyproject): name the types its calls return
    if content_type == JSON:
        text: str = json_format.MessageToJson(response, indent=None)
        return text.encode()
    wire: bytes = response.SerializeToString()
    return wire


def records_from(request: ExportTraceServiceRequest, *, now_ns: int | None = None) -> tuple[list[SpanRecord], int, str]:
    """(kept spans, refused count, first reason): spans ``validate`` refuses are counted, not stored;
    the rest are cut to its limits (and marked when cut). ``now_ns``: the clock times are judged by."""
    now = time.time_ns() if now_ns is None else now_ns
    records: list[SpanRecord] = []
    rejected = 0
    reason = ""
    for resource_spans in request.resource_spans:
        try:
            resource_limiter = SpanLimiter()
            resource = resource_limiter.attributes(resource_spans.resource.attributes)
            check_resource(resource)
            if resource_limiter.summary():
                resource[LIMITED] = resource_limiter.summary()
            scopes = [(resource_limiter.text(ss.scope.name), ss.spans) for ss in resource_spans.scope_spans]
        except Invalid as error:
            rejected += sum(len(ss.spans) for ss in resource_spans.scope_spans)
            reason = reason or f"resource: {error}"
            continue
        for scope, spans in scopes:
            for span in spans:
                try:
                    records.append(_record(span, resource, scope, now))
                except Invalid as error:
                    rejected += 1
                    reason = reason or str(error)
    return records, rejected, reason


def _record(span: Any, resource: dict[str, Any], scope: str, now_ns: int) -> SpanRecord:
    check_ids(span)
    check_times(span, now_ns)
    limiter = SpanLimiter()
    events = span.events
    if len(events) > EVENT_COUNT_LIMIT:
        limiter.events_dropped = len(events) - EVENT_COUNT_LIMIT
        events = events[:EVENT_COUNT_LIMIT]
    links = span.links
    if len(links) > LINK_COUNT_LIMIT:
        limiter.links_dropped = len(links) - LINK_COUNT_LIMIT
        links = links[:LINK_COUNT_LIMIT]
    attributes = limiter.attributes(span.attributes)
    check_run_id(attributes)
    text, convert = limiter.text, limiter.attributes
    status = span.status
    record = SpanRecord(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=text(span.name),
        kind=span.kind,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        status_code=status.code,
        status_message=text(status.message),
        attributes=attributes,
        events=[
            {
                "name": text(e.name),
                "time_ns": e.time_unix_nano,
                "attributes": convert(e.attributes, EVENT_ATTRIBUTE_COUNT_LIMIT),
            }
            for e in events
        ]
        if events
        else [],
        links=[
            {
                "trace_id": link.trace_id.hex(),
                "span_id": link.span_id.hex(),
                "attributes": convert(link.attributes, LINK_ATTRIBUTE_COUNT_LIMIT),
            }
            for link in links
        ]
        if links
        else [],
        resource=resource,
        scope=scope,
    )
    cut = limiter.summary()
    if cut:
        attributes[LIMITED] = cut
    return record


def set_attribute(span: Any, key: str, value: str) -> None:
    """Set a string attribute on a protobuf span (for forwarding what we changed)."""
    for kv in span.attributes:
        if kv.key == key:
            kv.value.string_value = value
            return
    span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
