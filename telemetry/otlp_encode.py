"""Built spans straight into OTLP protobuf messages, without SDK span objects on the way.

The OTel SDK path (a ``ReadableSpan`` per span, then ``encode_spans``) costs about as much in
object construction as in encoding, and its encoder builds every ``KeyValue``/``AnyValue`` as a
message of its own that is then copied into its parent. Here each span is written in place into
the ``ExportTraceServiceRequest`` being assembled (``repeated.add()`` on the upb backend of
protobuf), from the plain ``SpanData`` the run-trace builder keeps: a few times less work for the
same message.

The messages are the same as the SDK encoder's for the same spans (the differential test
``tests/test_otlp_encode.py`` compares them over every harness run): the same span and parent ids,
flags, kind, status (always present, as the SDK sets it), resource and scope, and attribute values
typed by the same rules (``bool`` before ``int``; ``None`` an empty value; sequences arrays,
mappings key-value lists; an attribute whose value cannot be encoded is logged and left out).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import StatusCode

from .runtrace import SCOPE, SpanData

__all__ = ["OtlpEncoder", "RequestBatcher", "encode_spans"]

log = logging.getLogger("telemetry.otlp_encode")

_INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL
_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = _HAS_IS_REMOTE | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_STATUS_CODES = {
    StatusCode.UNSET: Status.STATUS_CODE_UNSET,
    StatusCode.OK: Status.STATUS_CODE_OK,
    StatusCode.ERROR: Status.STATUS_CODE_ERROR,
}


def _set_value(target: AnyValue, value: Any) -> None:
    """``value`` into ``target``, typed as the SDK's OTLP encoder types it; raises on what it refuses."""
    kind = value.__class__
    if kind is str:  # the common cases first, by exact class
        target.string_value = value
    elif kind is int:
        target.int_value = value
    elif kind is bool:
        target.bool_value = value
    elif value is None:
        target.SetInParent()  # present and empty, as the SDK's ``AnyValue()``
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, Sequence):
        values = target.array_value.values
        target.array_value.SetInParent()
        for item in value:
            _set_value(values.add(), item)
    elif isinstance(value, Mapping):
        pairs = target.kvlist_value.values
        target.kvlist_value.SetInParent()
        for key, item in value.items():
            pair = pairs.add()
            pair.key = str(key)
            _set_value(pair.value, item)
    else:
        raise TypeError(f"Invalid type {type(value)} of value {value}")


def _add_attributes(target: Any, attributes: Mapping[str, Any]) -> None:
    """Each attribute as a ``KeyValue`` appended to the repeated field ``target``."""
    add = target.add
    for key, value in attributes.items():
        pair: KeyValue = add()
        pair.key = key
        kind = value.__class__
        if kind is str:
            pair.value.string_value = value
            continue
        try:
            _set_value(pair.value, value)
        except Exception as error:  # the SDK logs and drops what it cannot encode; so do we
            del target[-1]
            log.error("Failed to encode key %s: %s", key, error)


class OtlpEncoder:
    """Writes ``SpanData`` of one resource and scope into ``ExportTraceServiceRequest`` messages."""

    def __init__(self, resource: Resource, scope: InstrumentationScope = SCOPE) -> None:
        self.resource = resource
        self.scope = scope
        template = ExportTraceServiceRequest()
        resource_spans = template.resource_spans.add()
        resource_spans.resource.SetInParent()
        _add_attributes(resource_spans.resource.attributes, resource.attributes)
        resource_spans.schema_url = resource.schema_url or ""
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.SetInParent()
        scope_spans.scope.name = scope.name
        scope_spans.scope.version = scope.version or ""
        _add_attributes(scope_spans.scope.attributes, scope.attributes or {})
        scope_spans.schema_url = scope.schema_url or ""
        self._template = template.SerializeToString()
        self._trace: tuple[int, bytes] = (0, b"")

    def new_request(self) -> tuple[ExportTraceServiceRequest, Any]:
        """An empty request for this resource and scope, and the repeated field its spans go in."""
        request = ExportTraceServiceRequest.FromString(self._template)
        return request, request.resource_spans[0].scope_spans[0].spans

    def add(self, target: Any, span: SpanData) -> Span:
        """``span`` appended to ``target``, the spans field of ``new_request()``; the message written."""
        trace_id, trace_bytes = self._trace
        if span.trace_id != trace_id:
            trace_bytes = span.trace_id.to_bytes(16, "big")
            self._trace = (span.trace_id, trace_bytes)
        out: Span = target.add()
        out.trace_id = trace_bytes
        out.span_id = span.span_id.to_bytes(8, "big")
        if span.parent_span_id is not None:
            out.parent_span_id = span.parent_span_id.to_bytes(8, "big")
            out.flags = _IS_REMOTE if span.parent_is_remote else _HAS_IS_REMOTE
        else:
            out.flags = _HAS_IS_REMOTE
        out.name = span.name
        out.kind = _INTERNAL
        out.start_time_unix_nano = span.start_time
        out.end_time_unix_nano = span.end_time
        _add_attributes(out.attributes, span.attributes)
        if span.events:
            add_event = out.events.add
            for event in span.events:
                encoded: Span.Event = add_event()
                encoded.name = event.name
                encoded.time_unix_nano = event.timestamp
                if event.attributes:
                    _add_attributes(encoded.attributes, event.attributes)
        status = span.status
        if status is None:
            out.status.SetInParent()
        else:
            out.status.code = _STATUS_CODES[status.status_code]
            if status.description is not None:
                out.status.message = status.description
        return out

    def request(self, spans: Iterable[SpanData]) -> ExportTraceServiceRequest:
        """One request holding ``spans`` (none: an empty request, as the SDK's)."""
        request, target = self.new_request()
        for span in spans:
            self.add(target, span)
        return request if len(target) else ExportTraceServiceRequest()


def encode_spans(spans: Iterable[SpanData], resource: Resource) -> ExportTraceServiceRequest:
    """The request the SDK's ``encode_spans`` gives for these spans as ``ReadableSpan`` objects."""
    return OtlpEncoder(resource).request(spans)


class RequestBatcher:
    """Spans of many runs into serialized requests of at most ``max_spans`` spans and about
    ``max_bytes`` bytes each (a span bigger than that alone goes out alone).

    Small runs share a request (one POST per run would cost more than the run); a run bigger
    than a request is split across several. The byte bound keeps requests under what collectors
    accept (4 MiB is gRPC's default; ``wft serve`` takes 16 MiB) whatever the spans carry.
    ``add`` returns the requests it filled, each as (serialized request, spans in it).
    """

    def __init__(self, encoder: OtlpEncoder, max_spans: int = 512, max_bytes: int = 4 << 20) -> None:
        self.encoder = encoder
        self.max_spans = max(1, max_spans)
        self.max_bytes = max_bytes
        self._request: ExportTraceServiceRequest | None = None
        self._target: Any = None
        self.count = 0  # spans in the request being filled
        self._bytes = 0  # their encoded size

    def add(self, spans: Iterable[SpanData]) -> list[tuple[bytes, int]]:
        full: list[tuple[bytes, int]] = []
        for span in spans:
            if self._request is None:
                self._request, self._target = self.encoder.new_request()
            size = self.encoder.add(self._target, span).ByteSize()
            if self.count and self._bytes + size > self.max_bytes:  # it goes in the next request
                del self._target[-1]
                full.append(self._take())
                self._request, self._target = self.encoder.new_request()
                self.encoder.add(self._target, span)
            self.count += 1
            self._bytes += size
            if self.count >= self.max_spans or self._bytes >= self.max_bytes:
                full.append(self._take())
        return full

    def flush(self) -> tuple[bytes, int] | None:
        """The request being filled, if it holds any span."""
        return self._take() if self.count else None

    def _take(self) -> tuple[bytes, int]:
        assert self._request is not None
        taken = (self._request.SerializeToString(), self.count)
        self._request, self._target, self.count, self._bytes = None, None, 0, 0
        return taken
