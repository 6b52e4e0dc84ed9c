"""collector/otlp.py's plain path: ``records_from`` takes the spans that pass every check with
nothing to cut (all real workflow spans) in fewer steps, and must keep exactly what the full path
(validate's ``SpanLimiter`` and checks) keeps, refuses or cuts. Each case is decoded both ways, the
full path alone standing in for the code before the plain path existed: the records, in order and
with their attributes in order (``repr``), the refusals and their reasons are the same."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from collector import otlp
from collector.otlp import records_from
from collector.validate import ATTRIBUTE_COUNT_LIMIT, EVENT_COUNT_LIMIT, MAX_RUN_ID_LENGTH, MAX_VALUE_LENGTH
from telemetry.runtrace import build_run_trace

from .sdk_spans import make_sdk_spans
from .world_spans import RunLog

NOW = 1_900_000_000 * 10**9  # the clock spans are judged by (after every harness span)


def both_ways(request: ExportTraceServiceRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(plain path and full path, full path alone) over ``request``: the records and refusals as text."""
    fast = records_from(request, now_ns=NOW)
    with monkeypatch.context() as patch:
        patch.setattr(otlp, "_plain_record", lambda *args: None)  # every span through the full path
        full = records_from(request, now_ns=NOW)
    return repr(fast), repr(full)


@pytest.fixture(scope="module")
def real_request(harness_out: Path) -> ExportTraceServiceRequest:
    """Every span the runtrace builds from the harness's world-local runs, plus real SDK app spans."""
    data = harness_out / "local-data"
    spans = []
    for path in sorted((data / "runs").glob("*.json")):
        log = RunLog(data, path.stem)
        spans += build_run_trace(log.run_id, log.events, log.run).spans
    return encode_spans([*spans, *make_sdk_spans(3)])


def test_real_spans_decode_as_the_full_path_decodes_them(real_request, monkeypatch):
    fast, full = both_ways(real_request, monkeypatch)
    assert fast == full
    assert "wft.limits.truncated" not in fast  # nothing real is cut: the plain path took them all


_value = AnyValue


def _variants(base: Span) -> dict[str, Span]:
    """One real span changed in each way the plain path must leave to the full path (or take as is)."""
    long = "x" * (MAX_VALUE_LENGTH + 1)
    nested = _value(string_value="deep")
    for _ in range(10):
        nested = _value(array_value=ArrayValue(values=[nested]))

    def with_attribute(key: str, value: AnyValue) -> Span:
        span = copy.deepcopy(base)
        span.attributes.append(KeyValue(key=key, value=value))
        return span

    def changed(**fields: object) -> Span:
        span = copy.deepcopy(base)
        for name, value in fields.items():
            setattr(span, name, value)
        return span

    many = copy.deepcopy(base)
    many.attributes.extend(KeyValue(key=f"k{i}", value=_value(int_value=i)) for i in range(ATTRIBUTE_COUNT_LIMIT))
    events = copy.deepcopy(base)
    events.events.extend(Span.Event(name=f"e{i}", time_unix_nano=base.start_time_unix_nano) for i in range(130))
    assert len(events.events) > EVENT_COUNT_LIMIT
    event_attributes = copy.deepcopy(base)
    event_attributes.events.add(name="wide", time_unix_nano=base.start_time_unix_nano).attributes.extend(
        KeyValue(key=f"a{i}", value=_value(bool_value=True)) for i in range(ATTRIBUTE_COUNT_LIMIT + 1)
    )
    late_event = copy.deepcopy(base)
    late_event.events.add(name="late", time_unix_nano=2**63)
    linked = copy.deepcopy(base)
    linked.links.add(trace_id=base.trace_id, span_id=base.span_id)
    status = copy.deepcopy(base)
    status.status.code = 2
    status.status.message = long
    unset = copy.deepcopy(base)
    unset.attributes.append(KeyValue(key="unset"))
    return {
        "long string": with_attribute("s", _value(string_value=long)),
        "long key": with_attribute(long, _value(string_value="v")),
        "long key of an int": with_attribute(long, _value(int_value=1)),
        "empty string": with_attribute("empty", _value(string_value="")),
        "zero": with_attribute("zero", _value(int_value=0)),
        "bools": with_attribute("b", _value(bool_value=False)),
        "double": with_attribute("d", _value(double_value=0.25)),
        "nan": with_attribute("nan", _value(double_value=math.nan)),
        "bytes": with_attribute("raw", _value(bytes_value=b"\x00\x01")),
        "array": with_attribute("list", _value(array_value=ArrayValue(values=[_value(int_value=1)]))),
        "map": with_attribute(
            "map", _value(kvlist_value=KeyValueList(values=[KeyValue(key="a", value=_value(string_value="b"))]))
        ),
        "nested too deep": with_attribute("deep", nested),
        "unset value": unset,
        "run id too long": with_attribute("workflow.run.id", _value(string_value="r" * (MAX_RUN_ID_LENGTH + 1))),
        "run id an int": with_attribute("workflow.run.id", _value(int_value=7)),
        "too many attributes": many,
        "too many events": events,
        "too many event attributes": event_attributes,
        "event time out of range": late_event,
        "a link": linked,
        "long status message": status,
        "long name": changed(name=long),
        "zero trace id": changed(trace_id=bytes(16)),
        "short span id": changed(span_id=b"\x01" * 7),
        "zero span id": changed(span_id=bytes(8)),
        "bad parent": changed(parent_span_id=b"\x01" * 3),
        "no start": changed(start_time_unix_nano=0),
        "end before start": changed(end_time_unix_nano=base.start_time_unix_nano - 1),
        "end in the future": changed(end_time_unix_nano=NOW + 2 * 3600 * 10**9),
        "start in the future": changed(
            start_time_unix_nano=NOW + 2 * 3600 * 10**9, end_time_unix_nano=NOW + 2 * 3600 * 10**9
        ),
    }


def test_every_span_the_plain_path_must_not_take_decodes_as_the_full_path_does(real_request, monkeypatch):
    """Each variant alone, and all of them in one request among the real spans (a refused or cut span
    leaves its neighbours as they were)."""
    spans = [s for rs in real_request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    base = next(s for s in spans if s.events and s.parent_span_id)  # a real step span: attributes and events
    variants = _variants(base)
    mixed = copy.deepcopy(real_request)
    for name, span in variants.items():
        request = copy.deepcopy(real_request)
        del request.resource_spans[1:]
        scope_spans = request.resource_spans[0].scope_spans[0]
        del scope_spans.spans[:]
        scope_spans.spans.append(span)
        fast, full = both_ways(request, monkeypatch)
        assert fast == full, name
        mixed.resource_spans[0].scope_spans[0].spans.append(span)
    fast, full = both_ways(mixed, monkeypatch)
    assert fast == full
    records, rejected, _ = records_from(mixed, now_ns=NOW)
    assert rejected == 11  # the cases validate refuses; the others are kept (cut, or as they are)
    assert sum(1 for r in records if "wft.limits.truncated" in r.attributes) == 8


def test_resources_sent_again_in_a_request_are_converted_once_and_alike(real_request, monkeypatch):
    """``wft export`` sends a resource per run: equal resources give equal dicts (one shared dict),
    a different one its own, and a refused one refuses only its own spans."""
    request = copy.deepcopy(real_request)
    first = request.resource_spans[0]
    other = request.resource_spans.add()
    other.CopyFrom(first)
    other.resource.attributes.add(key="service.instance.id", value=_value(string_value="another"))
    bad = request.resource_spans.add()
    bad.CopyFrom(first)
    bad.resource.attributes.add(key="service.name", value=_value(int_value=3))  # the last of a key counts
    again = request.resource_spans.add()
    again.CopyFrom(first)
    fast, full = both_ways(request, monkeypatch)
    assert fast == full
    records, rejected, reason = records_from(request, now_ns=NOW)
    assert rejected == sum(len(ss.spans) for ss in bad.scope_spans) and reason.startswith("resource:")
    n = sum(len(ss.spans) for ss in first.scope_spans)
    assert records[0].resource is records[-1].resource  # the first resource and the one sent again
    assert records[0].resource != records[-n - 1].resource  # the first one with another attribute
