import asyncio

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from telemetry.errors import EntityConflictError, WorkflowWorldError
from telemetry.tracing import benign_counts
from telemetry.world import EventRequest, traced

from .fakes import FakeInMemoryWorld, vercel_stream_409

RUN = "wrun_01KQKXJQGJ78X9YSF34QG3GHFX"
STEP = "step_01KQKXJQGJ78X9YSF34QG3GHFY"


def _world(provider, **kwargs):
    inner = FakeInMemoryWorld(**kwargs)
    inner.add_run(RUN)
    return inner, traced(inner, peer_service="world-local", tracer_provider=provider)


def _only(exporter):
    (span,) = exporter.get_finished_spans()
    exporter.clear()
    return span


def test_runs_get_span_name_kind_and_rpc_attributes(spans):
    provider, exporter = spans
    _, world = _world(provider)
    run = asyncio.run(world.runs.get(RUN))
    assert run.run_id == RUN
    span = _only(exporter)
    assert span.name == "world.runs.get"
    assert span.kind is SpanKind.CLIENT
    assert span.attributes["rpc.system"] == "memory"
    assert span.attributes["rpc.service"] == "world-local"
    assert span.attributes["peer.service"] == "world-local"
    assert span.attributes["rpc.method"] == "world.runs.get"
    assert span.attributes["workflow.run.id"] == RUN
    assert span.status.status_code is StatusCode.UNSET
    assert span.instrumentation_scope.name == "workflow-telemetry"


def test_run_id_taken_from_the_result_when_not_in_the_arguments(spans):
    provider, exporter = spans
    _, world = _world(provider)
    asyncio.run(world.events.create(RUN, EventRequest("step_created", correlation_id=STEP)))
    span = _only(exporter)
    assert span.name == "world.events.create step_created"
    assert span.attributes["workflow.run.id"] == RUN
    assert span.attributes["step.id"] == STEP
    asyncio.run(world.runs.list())
    assert _only(exporter).name == "world.runs.list"


def test_events_and_streams_span_names(spans):
    provider, exporter = spans
    _, world = _world(provider)

    async def calls():
        await world.events.list(run_id=RUN)
        await world.streams.write("strm_x_user", RUN, b"a")
        await world.streams.write_multi("strm_x_user", RUN, [b"b", "c"])
        await world.streams.list(RUN)
        await world.streams.get_chunks("strm_x_user", RUN)
        await world.streams.get_info("strm_x_user", RUN)
        await world.streams.close("strm_x_user", RUN)

    asyncio.run(calls())
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == [
        "world.events.list",
        "world.streams.writeToStream",
        "world.streams.writeToStreamMulti",
        "world.streams.listStreamsByRunId",
        "world.streams.getStreamChunks",
        "world.streams.getStreamInfo",
        "world.streams.closeStream",
    ]
    assert all(s.attributes["workflow.run.id"] == RUN for s in exporter.get_finished_spans())


def test_error_goes_through_throw_with_trace(spans):
    provider, exporter = spans
    inner, world = _world(provider)
    inner.fail_next = WorkflowWorldError("GET /v2/runs -> HTTP 503", status=503)
    with pytest.raises(WorkflowWorldError):
        asyncio.run(world.runs.get(RUN))
    span = _only(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "HTTP 503"
    assert [e.name for e in span.events] == ["exception"]


def test_conflict_on_a_state_change_is_an_error(spans):
    provider, exporter = spans
    inner, world = _world(provider)
    inner.runs_by_id[RUN].status = "completed"
    with pytest.raises(EntityConflictError):
        asyncio.run(world.events.create(RUN, EventRequest("run_completed")))
    span = _only(exporter)
    assert span.name == "world.events.create run_completed"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "EntityConflictError"


def test_post_completion_stream_write_is_benign_but_still_raised(spans):
    provider, exporter = spans
    inner, world = _world(provider)
    inner.runs_by_id[RUN].status = "completed"
    with pytest.raises(Exception, match="HTTP 409"):
        asyncio.run(world.streams.write("strm_x_user", RUN, b"late"))
    span = _only(exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["workflow.conflict"] == "benign"
    assert span.attributes["error.type"] == "Exception"
    assert benign_counts() == {"Exception": 1}


def test_no_provider_calls_through_without_spans(spans):
    _, exporter = spans
    inner = FakeInMemoryWorld()
    inner.add_run(RUN)
    world = traced(inner, peer_service="world-local")  # no provider given, none registered globally
    assert asyncio.run(world.runs.get(RUN)).run_id == RUN
    inner.fail_next = WorkflowWorldError("x", status=500)
    with pytest.raises(WorkflowWorldError):
        asyncio.run(world.runs.get(RUN))
    assert exporter.get_finished_spans() == ()
    assert world.accepts_post_completion_writes is False  # other attributes pass through


def test_explicit_rpc_system(spans):
    provider, exporter = spans
    inner = FakeInMemoryWorld(conflict=vercel_stream_409)
    inner.add_run(RUN)
    world = traced(inner, peer_service="workflow-server", rpc_system="http", tracer_provider=provider)
    asyncio.run(world.runs.get(RUN))
    assert _only(exporter).attributes["rpc.system"] == "http"
