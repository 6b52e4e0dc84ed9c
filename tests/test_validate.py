"""collector/validate.py: what the edge refuses, what it cuts, and how odd values are kept, on real
SDK requests (``records_from``) and end to end through the real service (partial_success, the
runs list, strict JSON from the API)."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from collector.otlp import PROTOBUF, decode_request, records_from
from collector.validate import (
    ATTRIBUTE_COUNT_LIMIT,
    EVENT_COUNT_LIMIT,
    LIMITED,
    MAX_CLOCK_SKEW_NS,
    MAX_DEPTH,
    MAX_RUN_ID_LENGTH,
    MAX_VALUE_LENGTH,
)

from .conftest import get_json, http
from .sdk_spans import RUN, make_sdk_spans

PB = {"Content-Type": "application/x-protobuf"}


def _request(count: int = 2):
    return encode_spans(make_sdk_spans(count))


def _spans(request):
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _decode(request):
    return records_from(decode_request(request.SerializeToString(), PROTOBUF))


def _strict(text: str | bytes):
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "start, end, reason",
    [
        (lambda now: 0, lambda now: now, "start time missing"),
        (lambda now: 2**63 - 1, lambda now: 2**63 - 1, "start time too far in the future"),
        (lambda now: 2**63, lambda now: 2**63, "start time too far in the future"),
        (lambda now: 2**64 - 1, lambda now: 2**64 - 1, "start time too far in the future"),
        (
            lambda now: now + MAX_CLOCK_SKEW_NS + 60 * 10**9,
            lambda now: now + MAX_CLOCK_SKEW_NS + 61 * 10**9,
            "start time too far in the future",
        ),
        (lambda now: now, lambda now: now - 1, "end time before start time"),
        (lambda now: now, lambda now: 0, "end time before start time"),
        (lambda now: now, lambda now: 2**63, "end time too far in the future"),
        (lambda now: now, lambda now: 2**64 - 1, "end time too far in the future"),
    ],
)
def test_out_of_range_times_refuse_the_span_not_its_siblings(start, end, reason):
    """Times relative to the collector's clock are taken when the test runs, not when it is
    collected: a slow suite must not move a span back inside the skew bound."""
    request = _request()
    spans = _spans(request)
    now = time.time_ns()
    spans[1].start_time_unix_nano, spans[1].end_time_unix_nano = start(now), end(now)
    records, rejected, why = _decode(request)
    assert (rejected, why) == (1, reason)
    assert {r.span_id for r in records} == {s.span_id.hex() for i, s in enumerate(spans) if i != 1}


def test_a_little_clock_skew_is_kept():
    request = _request()
    span = _spans(request)[0]
    now = time.time_ns()
    span.start_time_unix_nano = now + MAX_CLOCK_SKEW_NS // 2
    span.end_time_unix_nano = now + MAX_CLOCK_SKEW_NS // 2 + 1
    assert _decode(request)[1] == 0


def test_an_event_time_past_64_bits_signed_refuses_the_span():
    request = _request()
    _spans(request)[0].events.add(name="late", time_unix_nano=2**63)
    records, rejected, why = _decode(request)
    assert (rejected, why) == (1, "event time out of range")


def test_link_ids_of_the_wrong_length_refuse_the_span():
    request = _request()
    span = _spans(request)[0]
    span.links.add(trace_id=span.trace_id, span_id=b"\x01\x02")
    assert _decode(request)[1:] == (1, "invalid link id")


def test_a_resource_whose_service_name_is_not_a_string_refuses_its_spans():
    request = _request()
    for kv in request.resource_spans[0].resource.attributes:
        if kv.key == "service.name":
            kv.value.CopyFrom(AnyValue(array_value={"values": [AnyValue(string_value="a")]}))
    records, rejected, why = _decode(request)
    assert records == [] and rejected == len(_spans(request)) and why == "resource: service.name is not a string"


def _nested(levels: int) -> AnyValue:
    value = AnyValue(string_value="bottom")
    for _ in range(levels - 1):
        value = AnyValue(array_value={"values": [value]})
    return value


def test_values_nested_past_the_depth_limit_refuse_the_span():
    request = _request()
    spans = _spans(request)
    spans[0].attributes.append(KeyValue(key="ok", value=_nested(MAX_DEPTH)))
    spans[1].attributes.append(KeyValue(key="deep", value=_nested(MAX_DEPTH + 1)))
    records, rejected, why = _decode(request)
    assert (rejected, why) == (1, f"attribute value nested deeper than {MAX_DEPTH} levels")
    kept = next(r for r in records if r.span_id == spans[0].span_id.hex())
    value, depth = kept.attributes["ok"], 1
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    assert (value, depth) == ("bottom", MAX_DEPTH)


def test_counts_and_lengths_past_the_sdk_limits_are_cut_and_marked():
    request = _request(1)
    span = _spans(request)[0]
    span.attributes.extend(KeyValue(key=f"extra{i}", value=AnyValue(int_value=i)) for i in range(ATTRIBUTE_COUNT_LIMIT))
    for i in range(EVENT_COUNT_LIMIT + 5):
        span.events.add(name=f"e{i}", time_unix_nano=span.start_time_unix_nano)
    long = next(kv for kv in span.attributes if kv.key != "workflow.run.id")
    long.value.string_value = "v" * (MAX_VALUE_LENGTH + 10)
    before = len(span.attributes)
    records, rejected, _ = _decode(request)
    record = next(r for r in records if r.span_id == span.span_id.hex())
    assert rejected == 0
    assert len(record.attributes) == ATTRIBUTE_COUNT_LIMIT + 1  # the first 128, as the SDK keeps them, and the mark
    assert len(record.events) == EVENT_COUNT_LIMIT and record.events[-1]["name"] == f"e{EVENT_COUNT_LIMIT - 1}"
    assert record.attributes[long.key] == "v" * MAX_VALUE_LENGTH
    dropped = before - ATTRIBUTE_COUNT_LIMIT
    assert record.attributes[LIMITED] == f"attributes={dropped} events=5 values=1"
    assert all(LIMITED not in r.attributes for r in records if r is not record)


def _sdk_spans_with(attributes: dict, *, start: int | None = None, run: str = RUN):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "validate"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("workflow")
    span = tracer.start_span("WORKFLOW odd", attributes={"workflow.run.id": run, **attributes}, start_time=start)
    span.end(end_time=None if start is None else start + 1000)
    provider.shutdown()
    return memory.get_finished_spans()


def test_non_finite_doubles_are_kept_as_the_otlp_json_strings():
    spans = _sdk_spans_with({"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "ok": 1.5, "list": [math.nan, 2.0]})
    (record,), rejected, _ = records_from(encode_spans(spans))
    assert rejected == 0
    assert [record.attributes[k] for k in ("nan", "inf", "ninf", "ok", "list")] == [
        "NaN",
        "Infinity",
        "-Infinity",
        1.5,
        ["NaN", 2.0],
    ]


# ---- end to end ----------------------------------------------------------------------------------


def _post(service, spans) -> tuple[int, ExportTraceServiceResponse]:
    status, _, body = http("POST", f"{service.url}/v1/traces", encode_spans(spans).SerializeToString(), PB)
    reply = ExportTraceServiceResponse()
    if status == 200:
        reply.ParseFromString(body)
    return status, reply


def test_a_nan_attribute_is_served_back_as_strict_json(collector):
    service = collector()
    spans = _sdk_spans_with({"ratio": math.nan, "limit": math.inf})
    status, reply = _post(service, spans)
    assert status == 200 and reply.partial_success.rejected_spans == 0
    trace_id = f"{spans[0].context.trace_id:032x}"
    for path in (f"/api/runs/{RUN}", f"/api/runs/{RUN}/waterfall", f"/api/traces/{trace_id}", "/api/runs"):
        status, _, body = http("GET", service.url + path)
        assert status == 200, (path, body)
        _strict(body)  # raises on a bare NaN
    span = get_json(f"{service.url}/api/traces/{trace_id}")["spans"][0]
    assert span["attributes"]["ratio"] == "NaN" and span["attributes"]["limit"] == "Infinity"


def test_a_span_at_the_end_of_time_does_not_pin_its_run_to_the_top(collector):
    service = collector()
    assert _post(service, make_sdk_spans(1))[0] == 200  # a run of now
    pinned = "wrun_01KQKXJQGJ78X9YSF34QG3PINN"
    status, reply = _post(service, _sdk_spans_with({}, start=2**63 - 1001, run=pinned))
    assert status == 200  # the request is fine; that span is not
    assert reply.partial_success.rejected_spans == 1
    assert "start time too far in the future" in reply.partial_success.error_message
    runs = get_json(f"{service.url}/api/runs")["data"]
    assert [r["runId"] for r in runs] == [RUN]


def test_concurrent_clients_one_with_times_past_2_63_do_not_fail_the_others(collector):
    """The issue's finding: one span at 2^63 rolled back the whole group commit (14 of 40 failed)."""
    service = collector()
    valid = [make_sdk_spans(1) for _ in range(26)]
    poisoned = []
    for _ in range(14):
        request = encode_spans(make_sdk_spans(1))
        _spans(request)[0].end_time_unix_nano = 2**63
        poisoned.append(request)

    async def go():
        def post(body: bytes):
            return http("POST", f"{service.url}/v1/traces", body, PB)

        bodies = [encode_spans(s).SerializeToString() for s in valid] + [p.SerializeToString() for p in poisoned]
        return await asyncio.gather(*(asyncio.to_thread(post, b) for b in bodies))

    answers = asyncio.run(go())
    assert [status for status, _, _ in answers] == [200] * 40
    for _, _, body in answers[26:]:
        reply = ExportTraceServiceResponse()
        reply.ParseFromString(body)
        assert reply.partial_success.rejected_spans == 1
    stored = {s["spanId"] for t in {f"{s.context.trace_id:032x}" for b in valid for s in b} for s in _trace(service, t)}
    assert {f"{s.context.span_id:016x}" for b in valid for s in b} <= stored


def _trace(service, trace_id: str) -> list[dict]:
    return get_json(f"{service.url}/api/traces/{trace_id}")["spans"]


def test_a_run_id_too_long_for_a_url_refuses_the_span():
    request = _request(1)
    span = _spans(request)[0]
    for kv in span.attributes:
        if kv.key == "workflow.run.id":
            kv.value.string_value = "wrun_" + "x" * MAX_RUN_ID_LENGTH
    records, rejected, why = _decode(request)
    assert (rejected, why) == (1, f"workflow.run.id longer than {MAX_RUN_ID_LENGTH} characters")
    assert span.span_id.hex() not in {r.span_id for r in records}
