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
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from telemetry.semconv import WORKFLOW_RUN_ID

from .validate import (
    ATTRIBUTE_COUNT_LIMIT,
    EVENT_ATTRIBUTE_COUNT_LIMIT,
    EVENT_COUNT_LIMIT,
    LIMITED,
    LINK_ATTRIBUTE_COUNT_LIMIT,
    LINK_COUNT_LIMIT,
    MAX_CLOCK_SKEW_NS,
    MAX_RUN_ID_LENGTH,
    MAX_TIME_NS,
    MAX_VALUE_LENGTH,
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


@dataclass(slots=True)
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
    latest = min(now + MAX_CLOCK_SKEW_NS, MAX_TIME_NS)
    records: list[SpanRecord] = []
    rejected = 0
    reason = ""
    # a request's resources by their wire form: an exporter that sends a resource per run (``wft
    # export``) repeats one, and the spans of equal resources share the one converted dict
    resources: dict[bytes, dict[str, Any]] = {}
    for resource_spans in request.resource_spans:
        try:
            resource_limiter = SpanLimiter()
            wire = resource_spans.resource.SerializeToString()
            resource = resources.get(wire)
            if resource is None:
                resource = resources[wire] = _resource(resource_spans.resource)
            scopes = [(resource_limiter.text(ss.scope.name), ss.spans) for ss in resource_spans.scope_spans]
        except Invalid as error:
            rejected += sum(len(ss.spans) for ss in resource_spans.scope_spans)
            reason = reason or f"resource: {error}"
            continue
        for scope, spans in scopes:
            for span in spans:
                record = _plain_record(span, resource, scope, latest)
                if record is not None:
                    records.append(record)
                    continue
                try:
                    records.append(_record(span, resource, scope, now))
                except Invalid as error:
                    rejected += 1
                    reason = reason or str(error)
    return records, rejected, reason


def _resource(message: Any) -> dict[str, Any]:
    """A resource's attributes within the limits (marked when cut); ``Invalid`` for one the store refuses."""
    limiter = SpanLimiter()
    resource = limiter.attributes(message.attributes)
    check_resource(resource)
    if limiter.summary():
        resource[LIMITED] = limiter.summary()
    return resource


_NO_TRACE, _NO_SPAN = bytes(16), bytes(8)


def _plain_attributes(items: Any, limit: int) -> dict[str, Any] | None:
    """``SpanLimiter.attributes`` for the plain case, None for anything else (the caller then takes
    the full path): at most ``limit`` keys, values strings, ints or bools, nothing to cut. Real
    workflow spans are all plain; this is half the cost of the full path."""
    if len(items) > limit:
        return None
    out: dict[str, Any] = {}
    for kv in items:
        key = kv.key
        v = kv.value
        text = v.string_value
        if text:  # non-empty: the value is this string (the common case: one access)
            if len(text) > MAX_VALUE_LENGTH or len(key) > MAX_VALUE_LENGTH:
                return None
            out[key] = text
            continue
        kind = v.WhichOneof("value")
        if kind == "int_value":
            out[key] = v.int_value
        elif kind == "string_value":
            out[key] = ""
        elif kind == "bool_value":
            out[key] = v.bool_value
        else:
            return None
        if len(key) > MAX_VALUE_LENGTH:
            return None
    return out


def _plain_record(span: Any, resource: dict[str, Any], scope: str, latest: int) -> SpanRecord | None:
    """``_record`` for a span that passes every check with nothing to cut (no links, plain attribute
    values, all within the limits), in fewer steps; None for any other span, which ``_record``
    then checks, cuts or refuses. ``latest``: the latest time a span may end (``check_times``)."""
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
    if len(trace_id) != 16 or trace_id == _NO_TRACE or len(span_id) != 8 or span_id == _NO_SPAN:
        return None
    if parent and len(parent) != 8:
        return None
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if not 0 < start <= end <= latest or span.links:
        return None
    attributes = _plain_attributes(span.attributes, ATTRIBUTE_COUNT_LIMIT)
    if attributes is None:
        return None
    run_id = attributes.get(WORKFLOW_RUN_ID)
    if isinstance(run_id, str) and len(run_id) > MAX_RUN_ID_LENGTH:
        return None
    events: list[dict[str, Any]] = []
    span_events = span.events
    if span_events:
        if len(span_events) > EVENT_COUNT_LIMIT:
            return None
        for e in span_events:
            name, at = e.name, e.time_unix_nano
            event_attributes = _plain_attributes(e.attributes, EVENT_ATTRIBUTE_COUNT_LIMIT)
            if event_attributes is None or at > MAX_TIME_NS or len(name) > MAX_VALUE_LENGTH:
                return None
            events.append({"name": name, "time_ns": at, "attributes": event_attributes})
    status = span.status
    name, message = span.name, status.message
    if len(name) > MAX_VALUE_LENGTH or len(message) > MAX_VALUE_LENGTH:
        return None
    return SpanRecord(
        trace_id.hex(),
        span_id.hex(),
        parent.hex(),
        name,
        span.kind,
        start,
        end,
        status.code,
        message,
        attributes,
        events,
        [],
        resource,
        scope,
    )


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
