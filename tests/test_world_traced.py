import asyncio
import copy
import inspect
import typing
from datetime import UTC, datetime

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from telemetry.errors import EntityConflictError, WorkflowWorldError
from telemetry.tracing import benign_counts
from telemetry.world import EventRequest, Hook, Pagination, World, protocol, traced

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


#: The span names world-local/world-vercel 4.x give their calls (``instrumentObject``), written out
#: from the SDK rather than from our code; ``readFromStream`` has no counterpart in our protocol.
SDK_SPAN_NAMES = {
    "world.runs.get",
    "world.runs.list",
    "world.steps.get",
    "world.steps.list",
    "world.events.get",
    "world.events.list",
    "world.events.listByCorrelationId",
    "world.events.create",
    "world.hooks.get",
    "world.hooks.getByToken",
    "world.hooks.list",
    "world.streams.writeToStream",
    "world.streams.writeToStreamMulti",
    "world.streams.closeStream",
    "world.streams.listStreamsByRunId",
    "world.streams.getStreamChunks",
    "world.streams.getStreamInfo",
}

#: One distinct value per protocol parameter name, so forwarding mix-ups show.
ARGUMENTS = {
    "run_id": RUN,
    "step_id": STEP,
    "event": EventRequest("step_completed", correlation_id=STEP),
    "chunk": b"chunk",
    "chunks": [b"a", "b"],
    "pagination": Pagination(limit=3),
    "resolve_data": "none",
    "status": "running",
    "limit": 7,
}


class _Recorder:
    """A namespace that accepts any call and records it, returning nothing."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        async def method(*args, **kwargs):
            self.calls.append((name, args, kwargs))

        return method


class _RecordingWorld:
    rpc_system = "memory"

    def __init__(self):
        self.runs, self.steps, self.events, self.hooks, self.streams = (_Recorder() for _ in range(5))


def _protocol_methods():
    """(namespace, method, signature) for every method of every namespace the World protocol declares."""
    for namespace, member in vars(protocol.World).items():
        if not isinstance(member, property):
            continue
        namespace_protocol = typing.get_type_hints(member.fget)["return"]
        for method, function in vars(namespace_protocol).items():
            if inspect.iscoroutinefunction(function):
                yield namespace, method, inspect.signature(function)


def test_every_world_protocol_method_is_a_span_with_the_sdk_name_and_forwards_its_arguments(spans):
    provider, exporter = spans
    inner = _RecordingWorld()
    world = traced(inner, peer_service="world-local", tracer_provider=provider)
    assert isinstance(world, World)
    methods = list(_protocol_methods())
    assert len(methods) >= 17
    seen = set()
    for namespace, method, signature in methods:
        args, kwargs = [], {}
        for name, param in list(signature.parameters.items())[1:]:
            value = ARGUMENTS.get(name, f"<{name}>")
            if param.kind is param.KEYWORD_ONLY:
                kwargs[name] = value
            else:
                args.append(value)
        asyncio.run(getattr(getattr(world, namespace), method)(*args, **kwargs))
        recorder = getattr(inner, namespace)
        assert recorder.calls == [(method, tuple(args), kwargs)], f"{namespace}.{method} forwarded wrongly"
        recorder.calls.clear()
        spans_made = exporter.get_finished_spans()
        assert len(spans_made) == 1, f"{namespace}.{method} is not traced"
        span = spans_made[0]
        exporter.clear()
        base = span.name.split(" ")[0]
        assert base.startswith(f"world.{namespace}.") and base in SDK_SPAN_NAMES, span.name
        assert span.kind is SpanKind.CLIENT and span.attributes["rpc.method"] == span.name
        if "run_id" in signature.parameters:
            assert span.attributes["workflow.run.id"] == RUN, span.name
        if "step_id" in signature.parameters:
            assert span.attributes["step.id"] == STEP, span.name
        seen.add(base)
    assert seen == SDK_SPAN_NAMES


def test_calls_outside_the_protocol_reach_the_world_untraced(spans):
    provider, exporter = spans
    inner = _RecordingWorld()
    world = traced(inner, peer_service="world-local", tracer_provider=provider)
    asyncio.run(world.events.changes(token="t"))  # not a World protocol method
    assert inner.events.calls == [("changes", (), {"token": "t"})]
    assert world.rpc_system == "memory" and world.peer_service == "world-local"
    assert exporter.get_finished_spans() == ()
    clone = copy.copy(world)  # __getattr__ must not recurse while the copy has no wrapped world yet
    asyncio.run(clone.runs.get(RUN))
    assert [s.name for s in exporter.get_finished_spans()] == ["world.runs.get"]


def test_hook_span_takes_the_run_from_the_result(spans):
    provider, exporter = spans
    inner = _RecordingWorld()

    async def get(hook_id):
        return Hook(run_id=RUN, hook_id=hook_id, token="tok", created_at=datetime.now(UTC))

    inner.hooks.get = get
    world = traced(inner, peer_service="world-local", tracer_provider=provider)
    asyncio.run(world.hooks.get("hook_1"))
    span = _only(exporter)
    assert span.name == "world.hooks.get"
    assert span.attributes["workflow.run.id"] == RUN
