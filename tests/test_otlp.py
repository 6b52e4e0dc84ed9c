"""collector/otlp.py: OTLP trace payloads from the real SDK's encoder, in protobuf and every JSON spelling."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from collector.otlp import (
    JSON,
    PROTOBUF,
    BadPayload,
    SpanRecord,
    any_value,
    decode_request,
    encode_response,
    records_from,
    set_attribute,
)

from .sdk_spans import RUN, make_sdk_spans

ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _varied_spans():
    """Real SDK spans with every kind, links, events, an error status and attributes of each type."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "varied", "deployment.environment": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("varied-scope")
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes={"workflow.run.id": RUN}) as root:
        root_context = root.get_span_context()
        for kind in (SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.INTERNAL):
            with tracer.start_as_current_span(
                f"child {kind.name}",
                kind=kind,
                links=[Link(root_context, {"link.why": "follows"})],
                attributes={"s": "x", "i": -7, "f": 0.25, "b": False, "ints": [1, 2], "strs": ["p", "q"]},
            ) as child:
                child.add_event("checkpoint", {"at": 3, "what": "half"})
        with tracer.start_as_current_span("failing") as failing:
            failing.record_exception(ValueError("bad value"))
            failing.set_status(Status(StatusCode.ERROR, "bad value"))
    provider.shutdown()
    return memory.get_finished_spans()


@pytest.fixture(scope="module")
def sdk_spans():
    return list(_varied_spans()) + list(make_sdk_spans(2))


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _expected(span) -> dict:
    """What the store should keep of one SDK span, derived from the span itself."""
    return {
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else "",
        "name": span.name,
        "kind": span.kind.value + 1,  # the SDK's enum starts at INTERNAL=0, OTLP's at UNSPECIFIED=0
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status_code": span.status.status_code.value,
        "status_message": span.status.description or "",
        "attributes": {k: _plain(v) for k, v in span.attributes.items()},
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": {k: _plain(v) for k, v in e.attributes.items()}}
            for e in span.events
        ],
        "links": [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": dict(link.attributes),
            }
            for link in span.links
        ],
        "resource": {k: _plain(v) for k, v in span.resource.attributes.items()},
        "scope": span.instrumentation_scope.name,
    }


def _as_dict(record: SpanRecord) -> dict:
    fields = dataclasses.asdict(record)
    return {key: fields[key] for key in fields if key not in ("source", "benign", "extra")}


def _decode(body: bytes, content_type: str) -> list[SpanRecord]:
    records, rejected, reason = records_from(decode_request(body, content_type))
    assert (rejected, reason) == (0, "")
    return records


def test_protobuf_from_the_sdk_encoder_keeps_every_field(sdk_spans):
    records = _decode(encode_spans(sdk_spans).SerializeToString(), PROTOBUF)
    by_id = {r.span_id: r for r in records}
    assert len(by_id) == len(sdk_spans)
    for span in sdk_spans:
        record = by_id[f"{span.context.span_id:016x}"]
        assert _as_dict(record) == _expected(span)
        assert record.source == "otlp" and not record.benign
    assert {r.kind for r in records} >= {1, 2, 3, 4, 5}
    assert any(r.links for r in records) and any(r.events for r in records)


def _hexify(node, *, to_hex: bool = True):
    """Ids as OTLP-JSON writes them (hex), from protobuf's JSON mapping (base64)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ID_KEYS and isinstance(value, str) and to_hex:
                node[key] = base64.b64decode(value).hex()
            else:
                _hexify(value, to_hex=to_hex)
    elif isinstance(node, list):
        for item in node:
            _hexify(item, to_hex=to_hex)
    return node


def _numbers_as_json_numbers(node):
    """int64 fields as JSON numbers rather than strings (both are valid OTLP-JSON)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("startTimeUnixNano", "endTimeUnixNano", "timeUnixNano", "intValue") and isinstance(value, str):
                node[key] = int(value)
            else:
                _numbers_as_json_numbers(value)
    elif isinstance(node, list):
        for item in node:
            _numbers_as_json_numbers(item)
    return node


JSON_SPELLINGS = {
    "hex ids, enum names": lambda r: _hexify(json_format.MessageToDict(r)),
    "hex ids, enum numbers": lambda r: _hexify(json_format.MessageToDict(r, use_integers_for_enums=True)),
    "base64 ids": lambda r: json_format.MessageToDict(r),
    "snake_case keys, hex ids": lambda r: _hexify(json_format.MessageToDict(r, preserving_proto_field_name=True)),
    "int64 as numbers": lambda r: _numbers_as_json_numbers(_hexify(json_format.MessageToDict(r))),
    "unknown fields": lambda r: {**_hexify(json_format.MessageToDict(r)), "futureField": {"x": 1}},
}


@pytest.mark.parametrize("spelling", list(JSON_SPELLINGS))
def test_every_json_spelling_decodes_like_protobuf(sdk_spans, spelling):
    request = encode_spans(sdk_spans)
    from_protobuf = _decode(request.SerializeToString(), PROTOBUF)
    document = JSON_SPELLINGS[spelling](request)
    from_json = _decode(json.dumps(document).encode(), JSON)
    assert from_json == from_protobuf


def test_enum_names_and_numbers_mean_the_same(sdk_spans):
    request = encode_spans(sdk_spans)
    by_name = json_format.MessageToDict(request)
    spans = [s for rs in by_name["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert any(str(s.get("kind", "")).startswith("SPAN_KIND_") for s in spans)
    assert any(str(s.get("status", {}).get("code", "")).startswith("STATUS_CODE_") for s in spans)
    records = _decode(json.dumps(_hexify(by_name)).encode(), JSON)
    assert {r.status_code for r in records} == {s.status.status_code.value for s in sdk_spans}


def _first_span(document: dict) -> dict:
    return document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]


@pytest.mark.parametrize(
    "key, value",
    [
        ("traceId", "xyz"),
        ("traceId", "4bf92f3577b34da6a3ce929d0e0e47"),  # 30 hex characters
        ("traceId", "zz" * 16),  # right length, not hex, not 16 bytes of base64
        ("spanId", "00f067aa0ba902bZ"),
        ("spanId", base64.b64encode(bytes(range(1, 10))).decode()),  # 9 bytes of base64
        ("parentSpanId", "00f067aa"),
        ("traceId", 12345),  # not a string at all
        ("traceId", "ü" * 32),  # not ASCII: base64 refuses it with a plain ValueError (was a 500)
        ("spanId", "é"),
    ],
)
def test_malformed_json_ids_refuse_the_request(sdk_spans, key, value):
    document = _hexify(json_format.MessageToDict(encode_spans(sdk_spans[:1])))
    _first_span(document)[key] = value
    with pytest.raises(BadPayload):
        decode_request(json.dumps(document).encode(), JSON)


def test_base64_and_hex_ids_can_be_mixed(sdk_spans):
    request = encode_spans(sdk_spans)
    hexed = _hexify(json_format.MessageToDict(request))
    base = json_format.MessageToDict(request)
    spans_hex = [s for rs in hexed["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    spans_b64 = [s for rs in base["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    for i in range(0, len(spans_hex), 2):  # every other span keeps base64 ids
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in spans_b64[i]:
                spans_hex[i][key] = spans_b64[i][key]
    assert _decode(json.dumps(hexed).encode(), JSON) == _decode(request.SerializeToString(), PROTOBUF)


def _resign(request, index: int, **fields) -> None:
    span = request.resource_spans[0].scope_spans[0].spans[index]
    for name, value in fields.items():
        setattr(span, name, value)


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"trace_id": bytes(16)}, "invalid trace id"),
        ({"trace_id": b"\x01" * 8}, "invalid trace id"),
        ({"trace_id": b""}, "invalid trace id"),
        ({"span_id": bytes(8)}, "invalid span id"),
        ({"span_id": b"\x01" * 16}, "invalid span id"),
        ({"parent_span_id": b"\x01\x02\x03\x04"}, "invalid parent span id"),
    ],
)
def test_a_span_with_bad_ids_is_rejected_not_the_request(sdk_spans, fields, reason):
    request = encode_spans(sdk_spans)
    spans = request.resource_spans[0].scope_spans[0].spans
    others = {s.span_id.hex() for i, s in enumerate(spans) if i != 1}
    others |= {s.span_id.hex() for rs in request.resource_spans[1:] for ss in rs.scope_spans for s in ss.spans}
    _resign(request, 1, **fields)
    records, rejected, why = records_from(decode_request(request.SerializeToString(), PROTOBUF))
    assert rejected == 1 and why == reason
    assert {r.span_id for r in records} == others


def test_rejections_are_counted_and_the_first_reason_kept(sdk_spans):
    request = encode_spans(sdk_spans)
    total = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    _resign(request, 0, span_id=bytes(8))
    _resign(request, 2, trace_id=bytes(16))
    _resign(request, 3, parent_span_id=b"\x09")
    records, rejected, reason = records_from(decode_request(request.SerializeToString(), PROTOBUF))
    assert (rejected, reason) == (3, "invalid span id") and len(records) == total - 3


def test_an_empty_json_id_is_a_rejected_span(sdk_spans):
    document = _hexify(json_format.MessageToDict(encode_spans(sdk_spans[:2])))
    _first_span(document)["traceId"] = ""
    records, rejected, reason = records_from(decode_request(json.dumps(document).encode(), JSON))
    assert (rejected, reason, len(records)) == (1, "invalid trace id", 1)


def test_a_root_span_has_an_empty_parent(sdk_spans):
    roots = [r for r in _decode(encode_spans(sdk_spans).SerializeToString(), PROTOBUF) if not r.parent_span_id]
    assert sorted(r.name for r in roots) == sorted(s.name for s in sdk_spans if s.parent is None)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"\xff\xff\xff", "invalid protobuf"),
        (b"\x0a\x05\x0a\x03", "invalid protobuf"),  # a length prefix promising more than follows
    ],
)
def test_invalid_protobuf(body, message):
    with pytest.raises(BadPayload, match=message):
        decode_request(body, PROTOBUF)


def test_truncated_protobuf_is_invalid(sdk_spans):
    body = encode_spans(sdk_spans).SerializeToString()
    with pytest.raises(BadPayload, match="invalid protobuf"):
        decode_request(body[: len(body) // 2], PROTOBUF)


def test_an_empty_body_is_an_empty_protobuf_request():
    assert records_from(decode_request(b"", PROTOBUF)) == ([], 0, "")


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "invalid JSON"),
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe\x00", "invalid JSON"),
        (b"[]", "must be an object"),
        (b"42", "must be an object"),
        (b'"resourceSpans"', "must be an object"),
        (b'{"resourceSpans": "nope"}', "invalid OTLP JSON"),
        (b'{"resourceSpans": ' + b"9" * 5000 + b"}", "invalid JSON"),  # past Python's int digits (was a 500)
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}', "invalid OTLP JSON"),
    ],
)
def test_invalid_json(body, message):
    with pytest.raises(BadPayload, match=message):
        decode_request(body, JSON)


def test_deeply_nested_json_is_a_bad_payload():
    with pytest.raises(BadPayload):
        decode_request(b'{"resourceSpans":' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON)


def test_an_empty_json_object_is_an_empty_request():
    assert records_from(decode_request(b"{}", JSON)) == ([], 0, "")


def test_any_value_of_each_kind():
    cases = [
        (AnyValue(string_value="s"), "s"),
        (AnyValue(bool_value=True), True),
        (AnyValue(int_value=-(2**62)), -(2**62)),
        (AnyValue(double_value=2.5), 2.5),
        (AnyValue(bytes_value=b"\x00\xffraw"), base64.b64encode(b"\x00\xffraw").decode()),
        (AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="a")])), [1, "a"]),
        (
            AnyValue(
                kvlist_value=KeyValueList(
                    values=[
                        KeyValue(key="k", value=AnyValue(bool_value=False)),
                        KeyValue(
                            key="nested", value=AnyValue(array_value=ArrayValue(values=[AnyValue(double_value=1.0)]))
                        ),
                    ]
                )
            ),
            {"k": False, "nested": [1.0]},
        ),
        (AnyValue(), None),
    ]
    for value, expected in cases:
        assert any_value(value) == expected
        assert json.loads(json.dumps(any_value(value))) == expected  # what the store writes, it can read


def test_attribute_values_in_json_are_typed(sdk_spans):
    document = _hexify(json_format.MessageToDict(encode_spans(sdk_spans[:1])))
    _first_span(document)["attributes"] = [
        {"key": "big", "value": {"intValue": str(2**53 + 1)}},
        {"key": "raw", "value": {"bytesValue": base64.b64encode(b"\x01\x02").decode()}},
        {"key": "map", "value": {"kvlistValue": {"values": [{"key": "a", "value": {"stringValue": "b"}}]}}},
        {"key": "empty", "value": {}},
    ]
    (record,) = _decode(json.dumps(document).encode(), JSON)
    assert record.attributes == {
        "big": 2**53 + 1,
        "raw": base64.b64encode(b"\x01\x02").decode(),
        "map": {"a": "b"},
        "empty": None,
    }


def test_response_without_rejections_is_empty_success():
    assert encode_response(PROTOBUF) == ExportTraceServiceResponse().SerializeToString()
    assert json.loads(encode_response(JSON)) == {}


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_partial_success_response_round_trips(content_type):
    body = encode_response(content_type, 3, "3 spans rejected: invalid trace id")
    response = ExportTraceServiceResponse()
    if content_type == JSON:
        json_format.Parse(body, response)
    else:
        response.ParseFromString(body)
    assert response.partial_success.rejected_spans == 3
    assert response.partial_success.error_message == "3 spans rejected: invalid trace id"


def test_set_attribute_replaces_or_appends(sdk_spans):
    request = encode_spans(sdk_spans[:1])
    span = request.resource_spans[0].scope_spans[0].spans[0]
    existing = span.attributes[0].key
    count = len(span.attributes)
    set_attribute(span, existing, "replaced")
    set_attribute(span, "workflow.conflict", "benign")
    set_attribute(span, "workflow.conflict", "benign")
    (record,) = records_from(decode_request(request.SerializeToString(), PROTOBUF))[0]
    assert len(span.attributes) == count + 1
    assert record.attributes[existing] == "replaced" and record.attributes["workflow.conflict"] == "benign"


def test_run_id_is_a_string_attribute_or_none(sdk_spans):
    (record,) = _decode(encode_spans(sdk_spans[:1]).SerializeToString(), PROTOBUF)
    assert record.run_id == record.attributes.get("workflow.run.id")
    other = copy.deepcopy(record)
    other.attributes["workflow.run.id"] = 42
    assert other.run_id is None
    del other.attributes["workflow.run.id"]
    assert other.run_id is None
