"""Built spans straight into OTLP protobuf bytes, without SDK span objects on the way.

The OTel SDK path (a ``ReadableSpan`` per span, then ``encode_spans``) costs about as much in
object construction as in encoding, and its encoder builds every ``KeyValue``/``AnyValue`` as a
message of its own that is then copied into its parent. Here each span is written as its wire
bytes from the plain ``SpanData`` the run-trace builder keeps: the framing (tags, lengths, the
fixed-width times) of the few message types a span is made of, field by field in field-number
order as protobuf itself writes them, with the parts that repeat (attribute keys, a run's id
and name on every span of it, the trace id) encoded once. Only plain ``str``/``int``/``bool``
values take that path; any other attribute value is written by protobuf (a ``KeyValue``
message on the upb backend, then its bytes), so the SDK's typing rules stay protobuf's own.
The resource and scope are protobuf messages too, serialized once per encoder.

The bytes are the SDK encoder's for the same spans (the differential test
``tests/test_otlp_encode.py`` compares messages and bytes over every harness run): the same
span and parent ids, flags, kind, status (always present, as the SDK sets it), resource and
scope, and attribute values typed by the same rules (``bool`` before ``int``; ``None`` an empty
value; sequences arrays, mappings key-value lists; an attribute whose value cannot be encoded is
logged and left out).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, SpanFlags, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import StatusCode

from .runtrace import SCOPE, SpanData
from .semconv import WORKFLOW_RUN_ID

__all__ = ["OtlpEncoder", "RequestBatcher", "RunBatcher", "encode_spans", "split_by_run"]

log = logging.getLogger("telemetry.otlp_encode")

_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = _HAS_IS_REMOTE | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_STATUS_CODES = {
    StatusCode.UNSET: Status.STATUS_CODE_UNSET,
    StatusCode.OK: Status.STATUS_CODE_OK,
    StatusCode.ERROR: Status.STATUS_CODE_ERROR,
}
_INT64 = (-(1 << 63), 1 << 63)

_pack_fixed64 = struct.Struct("<Q").pack


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


_SMALL = [bytes((n,)) for n in range(128)]


def _varint(n: int) -> bytes:
    """A non-negative int as a protobuf base-128 varint."""
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n > 127:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _named(tag: bytes, name: str) -> bytes:
    """A name's string field (nothing for an empty name: protobuf leaves a default out)."""
    encoded = name.encode()
    return _field(tag, encoded) if encoded else b""


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: tag, length, body."""
    n = len(body)
    return tag + (_SMALL[n] if n < 128 else _varint(n)) + body


# tags (field number << 3 | wire type) of the fields written here, from opentelemetry-proto's trace.proto
# and common.proto: Span, Span.Event, Status, KeyValue, AnyValue
_SPAN_TRACE_ID = _tag(1, 2)
_SPAN_SPAN_ID = _tag(2, 2)
_SPAN_PARENT_ID = _tag(4, 2)
_SPAN_NAME = _tag(5, 2)
_SPAN_KIND_INTERNAL = _tag(6, 0) + _varint(Span.SpanKind.SPAN_KIND_INTERNAL)
_SPAN_START = _tag(7, 1)
_SPAN_END = _tag(8, 1)
_SPAN_ATTRIBUTE = _tag(9, 2)
_SPAN_EVENT = _tag(11, 2)
_SPAN_STATUS = _tag(15, 2)
_SPAN_FLAGS = _tag(16, 5)
_EVENT_TIME = _tag(1, 1)
_EVENT_NAME = _tag(2, 2)
_EVENT_ATTRIBUTE = _tag(3, 2)
_STATUS_MESSAGE = _tag(2, 2)
_STATUS_CODE = _tag(3, 0)
_KV_KEY = _tag(1, 2)
_KV_VALUE = _tag(2, 2)
_ANY_STRING = _tag(1, 2)
_ANY_BOOL = _tag(2, 0)
_ANY_INT = _tag(3, 0)
_SPANS_IN_SCOPE = _tag(2, 2)  # ScopeSpans.spans
_SCOPE_IN_RESOURCE = _tag(2, 2)  # ResourceSpans.scope_spans
_RESOURCE_IN_REQUEST = _tag(1, 2)  # ExportTraceServiceRequest.resource_spans
_FLAGS = {False: _SPAN_FLAGS + struct.pack("<I", _HAS_IS_REMOTE), True: _SPAN_FLAGS + struct.pack("<I", _IS_REMOTE)}
_EMPTY_STATUS = _SPAN_STATUS + b"\x00"
_SPAN_ID_HEAD = _SPAN_SPAN_ID + b"\x08"  # then the id's 8 bytes
_PARENT_ID_HEAD = _SPAN_PARENT_ID + b"\x08"
_BOOLS = {True: _ANY_BOOL + b"\x01", False: _ANY_BOOL + b"\x00"}

#: attributes whose values repeat across a run's spans and a world's runs (identity, kind, state):
#: their encoded ``KeyValue`` is kept (``_Keys``); payloads, ids of single events and messages are not
_REPEATING = frozenset(
    {
        "workflow.run.id",
        "workflow.name",
        "workflow.span.kind",
        "workflow.run.status",
        "deployment.id",
        "step.name",
        "step.status",
        "step.attempt.outcome",
        "event.type",
        "anomaly.kind",
        "exception.type",
        "error.type",
    }
)
_KEPT_VALUES = 4096  # encoded repeating attributes kept at most (then forgotten at once: a cache, not a leak)


def _set_value(target: AnyValue, value: Any) -> None:
    """``value`` into ``target``, typed as the SDK's OTLP encoder types it; raises on what it refuses."""
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif value is None:
        target.SetInParent()  # present and empty, as the SDK's ``AnyValue()``
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


def _by_protobuf(key: str, value: Any) -> bytes | None:
    """One ``KeyValue``'s bytes as protobuf writes it; None (logged) for a value it refuses."""
    pair = KeyValue()
    try:
        pair.key = key
        _set_value(pair.value, value)
    except Exception as error:  # the SDK logs and drops what it cannot encode; so do we
        log.error("Failed to encode key %s: %s", key, error)
        return None
    encoded: bytes = pair.SerializeToString()
    return encoded


#: ``KeyValue.value`` field and ``AnyValue.string_value`` heads for a string of n < 126 bytes
_SHORT_STRING = [bytes((_KV_VALUE[0], n + 2, _ANY_STRING[0], n)) for n in range(126)]


class _Keys:
    """Encoded attribute keys, and the encoded ``KeyValue`` of repeating attributes."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.kept: dict[tuple[str, str], bytes] = {}

    def pair(self, key: str, value: Any) -> bytes | None:
        """``KeyValue`` bytes with their length in front (the tag is the container's)."""
        kind = value.__class__
        if kind is str:
            repeating = key in _REPEATING
            if repeating:
                kept = self.kept.get((key, value))
                if kept is not None:
                    return kept
            prefix = self.keys.get(key)
            try:
                text: bytes = value.encode()
                if prefix is None:
                    prefix = self._key(key)
            except UnicodeEncodeError:  # a lone surrogate: protobuf's own words on it
                return self._framed(_by_protobuf(key, value))
            n = len(text)
            size = len(prefix) + n + 4
            if size < 128:  # every length fits one byte: the common case, in one go
                framed = _SMALL[size] + prefix + _SHORT_STRING[n] + text
            else:
                pair = prefix + _field(_KV_VALUE, _field(_ANY_STRING, text))
                framed = _varint(len(pair)) + pair
            if repeating:
                if len(self.kept) >= _KEPT_VALUES:
                    self.kept.clear()
                self.kept[key, value] = framed
            return framed
        if kind is int and _INT64[0] <= value < _INT64[1]:
            body = _ANY_INT + _varint(value if value >= 0 else value + (1 << 64))
        elif kind is bool:
            body = _BOOLS[value]
        else:
            return self._framed(_by_protobuf(key, value))
        prefix = self.keys.get(key)
        if prefix is None:
            try:
                prefix = self._key(key)
            except UnicodeEncodeError:
                return self._framed(_by_protobuf(key, value))
        pair = prefix + _field(_KV_VALUE, body)
        return _varint(len(pair)) + pair

    def _key(self, key: str) -> bytes:
        prefix = self.keys[key] = _field(_KV_KEY, key.encode()) if key else b""
        return prefix

    @staticmethod
    def _framed(pair: bytes | None) -> bytes | None:
        return None if pair is None else _varint(len(pair)) + pair


class OtlpEncoder:
    """Writes ``SpanData`` of one resource and scope as OTLP bytes: each span's ``Span`` message
    (``span``), and requests of them (``frame``, ``request``)."""

    def __init__(self, resource: Resource, scope: InstrumentationScope = SCOPE) -> None:
        self.resource = resource
        self.scope = scope
        resource_spans = ResourceSpans()
        resource_spans.resource.SetInParent()
        _add_attributes(resource_spans.resource.attributes, resource.attributes)
        scope_spans = ScopeSpans()
        scope_spans.scope.SetInParent()
        scope_spans.scope.name = scope.name
        scope_spans.scope.version = scope.version or ""
        _add_attributes(scope_spans.scope.attributes, scope.attributes or {})
        # the messages around the spans, split where the spans go: ScopeSpans is its scope (field 1),
        # then the spans (field 2), then its schema url (field 3); ResourceSpans likewise
        self._scope_head = scope_spans.SerializeToString()
        scope_spans.Clear()
        scope_spans.schema_url = scope.schema_url or ""
        self._scope_tail = scope_spans.SerializeToString()
        resource_spans_tail = ResourceSpans(schema_url=resource.schema_url or "")
        self._resource_head = resource_spans.SerializeToString()
        self._resource_tail = resource_spans_tail.SerializeToString()
        self._keys = _Keys()
        self._trace: tuple[int, bytes] = (0, b"")
        #: span names and span event names (few: "attempt 1", event types) as their fields, each
        #: kind apart (a span's name is field 5, an event's field 2)
        self._span_names: dict[str, bytes] = {}
        self._event_names: dict[str, bytes] = {}

    def span(self, span: SpanData) -> bytes:
        """``span``'s ``Span`` message, as the length-delimited field of ``ScopeSpans`` it goes in."""
        trace_id, trace_field = self._trace
        if span.trace_id != trace_id:
            trace_field = _SPAN_TRACE_ID + b"\x10" + span.trace_id.to_bytes(16, "big")
            self._trace = (span.trace_id, trace_field)
        parent = span.parent_span_id
        parts = [trace_field, _SPAN_ID_HEAD, span.span_id.to_bytes(8, "big")]
        append = parts.append
        if parent is not None:
            append(_PARENT_ID_HEAD)
            append(parent.to_bytes(8, "big"))
        names = self._span_names
        name = names.get(span.name)
        if name is None:
            if len(names) >= _KEPT_VALUES:  # a cache, not a leak (hook spans are named by their tokens)
                names.clear()
            name = names[span.name] = _named(_SPAN_NAME, span.name)
        append(name)
        append(_SPAN_KIND_INTERNAL)
        if span.start_time:
            append(_SPAN_START + _pack_fixed64(span.start_time))
        if span.end_time:
            append(_SPAN_END + _pack_fixed64(span.end_time))
        pair = self._keys.pair
        for key, value in span.attributes.items():
            encoded = pair(key, value)
            if encoded is not None:
                append(_SPAN_ATTRIBUTE)
                append(encoded)
        event_names = self._event_names
        for event in span.events:
            name = event_names.get(event.name)
            if name is None:
                if len(event_names) >= _KEPT_VALUES:
                    event_names.clear()
                name = event_names[event.name] = _named(_EVENT_NAME, event.name)
            body = _EVENT_TIME + _pack_fixed64(event.timestamp) + name if event.timestamp else name
            for key, value in event.attributes.items():
                encoded = pair(key, value)
                if encoded is not None:
                    body += _EVENT_ATTRIBUTE + encoded
            n = len(body)
            append(_SPAN_EVENT + (_SMALL[n] if n < 128 else _varint(n)) + body)
        status = span.status
        if status is None:
            append(_EMPTY_STATUS)
        else:
            code = _STATUS_CODES[status.status_code]
            message = _field(_STATUS_MESSAGE, status.description.encode()) if status.description else b""
            append(_field(_SPAN_STATUS, message + (_STATUS_CODE + _varint(code) if code else b"")))
        append(_FLAGS[parent is not None and bool(span.parent_is_remote)])
        return _field(_SPANS_IN_SCOPE, b"".join(parts))

    def frame(self, spans: Sequence[bytes]) -> bytes:
        """A serialized ``ExportTraceServiceRequest`` holding ``spans`` (``span``'s bytes, at least one)."""
        scope_spans = b"".join([self._scope_head, *spans, self._scope_tail])
        resource_spans = self._resource_head + _field(_SCOPE_IN_RESOURCE, scope_spans) + self._resource_tail
        return _field(_RESOURCE_IN_REQUEST, resource_spans)

    def request(self, spans: Iterable[SpanData]) -> ExportTraceServiceRequest:
        """One request holding ``spans`` (none: an empty request, as the SDK's)."""
        encoded = [self.span(span) for span in spans]
        return ExportTraceServiceRequest.FromString(self.frame(encoded)) if encoded else ExportTraceServiceRequest()


def _add_attributes(target: Any, attributes: Mapping[str, Any]) -> None:
    """Each attribute as a ``KeyValue`` appended to the repeated field ``target`` (resource, scope)."""
    for key, value in attributes.items():
        pair: KeyValue = target.add()
        pair.key = key
        try:
            _set_value(pair.value, value)
        except Exception as error:  # the SDK logs and drops what it cannot encode; so do we
            del target[-1]
            log.error("Failed to encode key %s: %s", key, error)


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
        self._spans: list[bytes] = []  # the request being filled: its spans' bytes
        self._bytes = 0  # their encoded size

    @property
    def count(self) -> int:
        """Spans in the request being filled."""
        return len(self._spans)

    def add(self, spans: Iterable[SpanData]) -> list[tuple[bytes, int]]:
        full: list[tuple[bytes, int]] = []
        encode = self.encoder.span
        held = self._spans
        for span in spans:
            encoded = encode(span)
            size = len(encoded)
            if held and self._bytes + size > self.max_bytes:  # it goes in the next request
                full.append(self._take())
                held = self._spans
            held.append(encoded)
            self._bytes += size
            if len(held) >= self.max_spans or self._bytes >= self.max_bytes:
                full.append(self._take())
                held = self._spans
        return full

    def flush(self) -> tuple[bytes, int] | None:
        """The request being filled, if it holds any span."""
        return self._take() if self._spans else None

    def _take(self) -> tuple[bytes, int]:
        taken = (self.encoder.frame(self._spans), len(self._spans))
        self._spans, self._bytes = [], 0
        return taken


class RunBatcher:
    """A ``RequestBatcher`` that knows whose spans each request holds: ``add`` takes a run's spans
    and returns the requests it filled as (serialized request, spans in it, ids of the runs with
    spans in it), so a refused request counts against exactly those runs and no others.

    A run that would not fit in the request being filled starts the next one (the filled one goes
    out short) rather than straddling two; only a run bigger than a request is split, and then
    each part names it. Shared by both paths of ``wft export`` (one process, or worker processes
    each batching its chunk of runs).
    """

    def __init__(self, encoder: OtlpEncoder, max_spans: int = 512, max_bytes: int = 4 << 20) -> None:
        self.requests = RequestBatcher(encoder, max_spans, max_bytes)
        #: the runs with spans in the request being filled, in the order they were added
        self.holding: list[str] = []

    @property
    def count(self) -> int:
        """Spans in the request being filled."""
        return self.requests.count

    def add(self, run_id: str, spans: Sequence[SpanData]) -> list[tuple[bytes, int, list[str]]]:
        requests = self.requests
        full: list[tuple[bytes, int, list[str]]] = []
        if requests.count and requests.count + len(spans) > requests.max_spans:
            full.append(self._take(requests.flush()))
        # a request holds the run if it grew past what it held before (the byte bound can close
        # one before any span of the run went in); lists handed out are never changed again
        before, holding = requests.count, self.holding
        for body, count in requests.add(spans):
            if count > before:
                holding.append(run_id)
            full.append((body, count, holding))
            before, holding = 0, []
        if requests.count > before:
            holding.append(run_id)
        self.holding = holding
        return full

    def flush(self) -> tuple[bytes, int, list[str]] | None:
        """The request being filled, if it holds any span."""
        return self._take(self.requests.flush()) if self.requests.count else None

    def _take(self, request: tuple[bytes, int] | None) -> tuple[bytes, int, list[str]]:
        assert request is not None  # only taken when the request holds spans
        taken = (*request, self.holding)
        self.holding = []
        return taken


def split_by_run(body: bytes) -> dict[str | None, tuple[bytes, int]]:
    """A serialized request cut into one request per run (by each span's ``workflow.run.id``; None
    for spans without one): run id → (serialized request, spans in it). Each keeps its spans'
    resources and scopes. For a request refused for its data: sent again a run at a time, one run's
    bad span fails that run alone."""
    request = ExportTraceServiceRequest.FromString(body)
    parts: dict[str | None, ExportTraceServiceRequest] = {}
    resources: dict[tuple[str | None, int], Any] = {}  # (run, resource's place) → its ResourceSpans in the part
    scopes: dict[tuple[str | None, int, int], Any] = {}  # (run, resource's place, scope's place) → ScopeSpans
    for r, resource_spans in enumerate(request.resource_spans):
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            for span in scope_spans.spans:
                run_id = next((kv.value.string_value for kv in span.attributes if kv.key == WORKFLOW_RUN_ID), None)
                key = (run_id, r, s)
                if key not in scopes:
                    part = parts.setdefault(run_id, ExportTraceServiceRequest())
                    if (run_id, r) not in resources:
                        resources[(run_id, r)] = part.resource_spans.add(
                            resource=resource_spans.resource, schema_url=resource_spans.schema_url
                        )
                    scopes[key] = resources[(run_id, r)].scope_spans.add(
                        scope=scope_spans.scope, schema_url=scope_spans.schema_url
                    )
                scopes[key].spans.append(span)
    return {
        run_id: (part.SerializeToString(), sum(len(ss.spans) for rs in part.resource_spans for ss in rs.scope_spans))
        for run_id, part in parts.items()
    }
