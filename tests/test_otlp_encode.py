"""otlp_encode: spans built from real event logs, written straight into OTLP messages, are the
messages the OTel SDK's encoder makes of the same spans as ``ReadableSpan`` objects.

Differential over every harness run on both worlds, at every point of each log (so live runs,
with open parts, are covered as well as finished ones), with and without payloads, and over the
untidy shapes real logs take; plus attribute values of every type the SDK encoder knows."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags, Status
from opentelemetry.sdk.resources import Resource

from telemetry.backends.local import LocalWorld
from telemetry.backends.postgres import PostgresWorld
from telemetry.export import run_resource
from telemetry.otlp_encode import OtlpEncoder, RequestBatcher, encode_spans
from telemetry.reading import all_runs, event_log
from telemetry.runtrace import RunTrace, RunTraceBuilder, SpanData, SpanEventData, build_run_trace, readable_span
from telemetry.world import Event, WorkflowRun

CUT = Path(__file__).parent / "fixtures" / "local-cut"
RESOURCE = run_resource("local")


def _logs(world: Any) -> list[tuple[WorkflowRun, list[Event]]]:
    async def go() -> list[tuple[WorkflowRun, list[Event]]]:
        try:
            return [(run, await event_log(world, run.run_id)) async for run in all_runs(world)]
        finally:
            await world.close()

    return asyncio.run(go())


class _Compared:
    """Counts what the comparisons covered, so a test can insist it covered something."""

    def __init__(self) -> None:
        self.requests = 0
        self.spans = 0
        self.errors = 0
        self.events = 0
        self.remote = 0

    def check(self, spans: list[Any], data: list[SpanData], resource: Resource = RESOURCE) -> None:
        ours = OtlpEncoder(resource).request(data)
        theirs = sdk_encode(spans)
        assert ours == theirs
        assert ours.SerializeToString() == theirs.SerializeToString()  # the same bytes, even
        self.requests += 1
        for resource_spans in ours.resource_spans:
            for span in resource_spans.scope_spans[0].spans:
                self.spans += 1
                self.errors += span.status.code == Status.STATUS_CODE_ERROR
                self.events += len(span.events)
                self.remote += bool(span.flags & SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK)

    def trace(self, trace: RunTrace) -> None:
        self.check(trace.spans, trace.data, trace.resource)


def _prefixes(events: list[Event]) -> Iterator[list[Event]]:
    for n in range(1, len(events) + 1):
        yield events[:n]


@pytest.mark.parametrize("snapshot", ["local-data", "local-data-midrun"])
def test_every_local_harness_run_encodes_as_the_sdk_encodes_it(harness_out, snapshot):
    compared = _Compared()
    for run, events in _logs(LocalWorld(harness_out / snapshot)):
        for payloads in (True, False):
            for prefix in _prefixes(events):
                compared.trace(build_run_trace(run.run_id, prefix, run, resource=RESOURCE, include_payloads=payloads))
        builder = RunTraceBuilder(run.run_id, run, resource=RESOURCE)
        for event in events:  # what a follower sends as parts close: the same messages too
            before = len(builder.closed)
            builder.feed([event])
            keys = builder.closed[before:]
            compared.check(builder.spans(keys), builder.span_data(keys))
    assert compared.requests > 250 and compared.spans > 400, (compared.requests, compared.spans)
    assert compared.errors and compared.events  # failures (status with a message) and span events covered


def test_every_postgres_harness_run_encodes_as_the_sdk_encodes_it(harness_pg_url):
    compared = _Compared()
    resource = run_resource("postgres")
    for run, events in _logs(PostgresWorld(harness_pg_url)):
        for prefix in _prefixes(events):
            compared.trace(build_run_trace(run.run_id, prefix, run, resource=resource))
    assert compared.requests > 100 and compared.errors and compared.events


def test_a_carried_traceparent_gives_a_remote_parent_as_the_sdk_flags_it(harness_out):
    compared = _Compared()
    for run, events in _logs(LocalWorld(harness_out / "local-data")):
        carried = dataclasses.replace(
            run,
            execution_context={
                "traceCarrier": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
            },
        )
        compared.trace(build_run_trace(run.run_id, events, carried, resource=RESOURCE))
    assert compared.remote == 11  # each run span, under the app's span


def test_untidy_logs_encode_as_the_sdk_encodes_them(harness_out):
    """Duplicates, events after the end, ends without starts, steps left open at the end: the
    anomaly events and the bool/int attributes they add come out typed as the SDK types them."""
    compared = _Compared()
    for run, events in _logs(LocalWorld(harness_out / "local-data")):
        late = dataclasses.replace(events[-1], event_id=events[-1].event_id + "x", created_at=events[-1].created_at)
        shapes = [
            events + events[:3],  # duplicates
            events + [late],  # after the terminal event
            events[2:],  # no run_created, ends without starts
            [e for e in events if not e.event_type.startswith("step_completed")],  # open at the run's end
            [dataclasses.replace(e, created_at=e.created_at + timedelta(seconds=i)) for i, e in enumerate(events)],
        ]
        for shape in shapes:
            compared.trace(build_run_trace(run.run_id, shape, run, resource=RESOURCE))
    assert compared.spans > 200


def _real_span() -> SpanData:
    run, events = next((r, e) for r, e in _logs(LocalWorld(CUT)) if any(x.event_type == "step_failed" for x in e))
    return next(s for s in build_run_trace(run.run_id, events, run, resource=RESOURCE).data if s.events)


def test_attribute_values_of_every_type_are_typed_as_the_sdk_types_them(caplog):
    odd: dict[str, Any] = {
        "bool": True,
        "int": -3,
        "float": 1.5,
        "bytes": b"\x00\x01",
        "list": [1, "a", None, 2.5, False],
        "tuple": (True, (1, 2)),
        "map": {"k": [1, {"deep": "x"}], 3: "int key"},
        "none": None,
        "empty list": [],
        "empty map": {},
        "too big": 2**70,  # refused by protobuf: the attribute is left out, the others stay
        "object": object(),  # no encoding at all: left out
        "bad inside": [1, object()],
        "after": "still here",
    }
    base = _real_span()
    span = base._replace(
        attributes={**base.attributes, **odd},
        events=[*base.events, SpanEventData("odd", base.start_time, dict(odd))],
    )
    with caplog.at_level(logging.ERROR):
        ours = encode_spans([span], RESOURCE)
        theirs = sdk_encode([readable_span(span, RESOURCE)])
    assert ours == theirs
    keys = [kv.key for kv in ours.resource_spans[0].scope_spans[0].spans[0].attributes]
    assert "after" in keys and "map" in keys and not {"too big", "object", "bad inside"} & set(keys)
    ours_logged = {r.getMessage().split(":")[0] for r in caplog.records if r.name == "telemetry.otlp_encode"}
    assert ours_logged == {
        "Failed to encode key too big",
        "Failed to encode key object",
        "Failed to encode key bad inside",
    }


def test_lengths_and_text_at_the_edges_are_written_as_protobuf_writes_them(caplog):
    """The hand-framed fast path (strings, ints, bools) against the SDK encoder at the lengths where
    a one-byte length becomes two, non-ASCII text, empty keys and values, the int64 bounds, a lone
    surrogate (refused: logged and left out) and the repeating attributes kept encoded."""
    base = _real_span()
    edges: dict[str, Any] = {"": "empty key", "empty": "", "é ключ": "значение ✓", "k" * 200: "long key"}
    for n in (0, 1, 100, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 200, 16383, 16384, 70_000):
        edges[f"len {n}"] = "x" * n
    edges |= {"int64 max": 2**63 - 1, "int64 min": -(2**63), "minus one": -1, "zero": 0, "false": False}
    edges |= {"surrogate": "\ud800", "after": "kept"}
    spans = [
        base._replace(attributes={**base.attributes, **edges}),
        base._replace(name="", start_time=0, end_time=0, events=[SpanEventData("", 0, dict(edges))]),
        base._replace(span_id=base.span_id + 1),  # its repeating attributes come from what was kept
    ]
    with caplog.at_level(logging.ERROR):
        ours = encode_spans(spans, RESOURCE)
        theirs = sdk_encode([readable_span(span, RESOURCE) for span in spans])
    assert ours.SerializeToString() == theirs.SerializeToString()
    keys = [kv.key for kv in ours.resource_spans[0].scope_spans[0].spans[0].attributes]
    assert "after" in keys and "surrogate" not in keys and "len 70000" in keys


def test_no_spans_is_an_empty_request_as_the_sdk_gives():
    assert encode_spans([], RESOURCE) == sdk_encode([]) == ExportTraceServiceRequest()


def test_batcher_fills_requests_up_to_the_limit_and_sends_each_span_once(harness_out):
    spans = [
        s
        for run, events in _logs(LocalWorld(harness_out / "local-data"))
        for s in build_run_trace(run.run_id, events, run, resource=RESOURCE).data
    ]
    batcher = RequestBatcher(OtlpEncoder(RESOURCE), max_spans=7)
    bodies = batcher.add(spans[:30]) + batcher.add(spans[30:])
    last = batcher.flush()
    assert last is not None and batcher.flush() is None
    bodies.append(last)
    seen: list[bytes] = []
    for body, count in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        (resource_spans,) = request.resource_spans
        (scope_spans,) = resource_spans.scope_spans
        assert len(scope_spans.spans) == count <= 7
        assert scope_spans.scope.name == "workflow-telemetry.runtrace"
        assert {kv.key for kv in resource_spans.resource.attributes} >= {"service.name", "workflow.world"}
        seen += [s.span_id for s in scope_spans.spans]
    assert [c for _, c in bodies[:-1]] == [7] * (len(bodies) - 1)
    assert seen == [s.span_id.to_bytes(8, "big") for s in spans]  # each once, in order


def test_batcher_keeps_requests_under_the_byte_bound(harness_out):
    spans = [
        s
        for run, events in _logs(LocalWorld(harness_out / "local-data"))
        for s in build_run_trace(run.run_id, events, run, resource=RESOURCE).data
    ]
    bound = 4000
    batcher = RequestBatcher(OtlpEncoder(RESOURCE), max_spans=512, max_bytes=bound)
    bodies = batcher.add(spans)
    last = batcher.flush()
    assert last is not None
    bodies.append(last)
    assert len(bodies) > 5
    seen: list[bytes] = []
    for body, count in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        got = request.resource_spans[0].scope_spans[0].spans
        assert len(got) == count
        spans_bytes = sum(s.ByteSize() for s in got)
        assert spans_bytes <= bound or count == 1  # only a span bigger than the bound alone goes over it
        seen += [s.span_id for s in got]
    assert seen == [s.span_id.to_bytes(8, "big") for s in spans]
