"""``telemetry.instrumentation.vercel_workflow`` with the real vercel-workflow package, in-process.

The workflows of ``tests/pyworkflows/apps.py`` run on vercel-workflow's local world in a fresh process
(``tests/pyworkflows/run.py --spans``) with a real SDK tracer provider; the finished spans come back as the
in-memory exporter's JSON. The Vercel world's stream 409 comes from its own HTTP client talking to a loopback
stand-in for workflow-server (none can run here).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace

from telemetry.instrumentation.vercel_workflow import REQUIREMENT, WORLD_SPANS, VercelWorkflowInstrumentor
from telemetry.tracing import benign_counts

from .threaded_server import serve_in_thread

REPO = Path(__file__).resolve().parents[1]
LOCAL = "vercel.workflow._internal.worlds.local"
VERCEL = "vercel.workflow._internal.worlds.vercel"


def _classes() -> list[type]:
    import importlib

    return [importlib.import_module(LOCAL).LocalWorld, importlib.import_module(VERCEL).VercelWorld]


def _patched_names(cls: type) -> list[str]:
    return [m for m in (*WORLD_SPANS, "create_queue_handler", "queue") if m in cls.__dict__]


@pytest.fixture
def instrumentor(spans):
    provider, exporter = spans
    instrumentor = VercelWorkflowInstrumentor()
    yield instrumentor, provider, exporter
    instrumentor.uninstrument()


# ---- instrument / uninstrument ---------------------------------------------------------------


def test_dependencies_name_the_package():
    assert VercelWorkflowInstrumentor().instrumentation_dependencies() == (REQUIREMENT,)


def test_uninstrument_restores_the_original_functions_exactly(instrumentor):
    inst, provider, _ = instrumentor
    originals = {(cls, name): cls.__dict__[name] for cls in _classes() for name in _patched_names(cls)}
    assert len(originals) == 2 * (len(WORLD_SPANS) + 2)
    inst.instrument(tracer_provider=provider)
    for (cls, name), original in originals.items():
        patched = cls.__dict__[name]
        assert patched is not original and patched.__wrapped__ is original, (cls, name)
    inst.uninstrument()
    for (cls, name), original in originals.items():
        assert cls.__dict__[name] is original, (cls, name)
    inst.instrument(tracer_provider=provider)  # and again: instrument/uninstrument cycles
    inst.uninstrument()
    assert all(cls.__dict__[name] is original for (cls, name), original in originals.items())


def test_off_hands_back_the_worlds_own_coroutine(instrumentor, tmp_path, monkeypatch):
    """No tracer provider: the wrapper returns the original coroutine (one check, no extra frame)."""
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a global tracer provider is set in this process")
    inst, _, _ = instrumentor
    monkeypatch.setenv("WORKFLOW_LOCAL_DATA_DIR", str(tmp_path))
    local_world = _classes()[0]
    original = local_world.__dict__["runs_get"]
    inst.instrument()
    world = local_world()
    call = world.runs_get("wrun_01M8PCQ3HVMYEK75KZ635GRYY4")
    try:
        assert call.cr_code is original.__code__
    finally:
        call.close()


def test_opentelemetry_instrument_loads_it_through_the_entry_point():
    code = (
        "from vercel.workflow._internal.worlds.local import LocalWorld as L;"
        "print(getattr(L.events_create, '__wrapped__', None) is not None)"
    )
    result = subprocess.run(
        [str(Path(sys.executable).with_name("opentelemetry-instrument")), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True"


# ---- a real app's spans ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def instrumented_app(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("pyapp")
    data, spans_file = out / "data", out / "spans.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "tests.pyworkflows.run", str(data), "--spans", str(spans_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    return {"report": json.loads(result.stdout), "spans": spans, "data": data}


def _of_run(app: dict[str, Any], scenario: str, prefix: str = "") -> list[dict[str, Any]]:
    run_id = app["report"][scenario]["run_id"]
    return [
        s for s in app["spans"] if s["attributes"].get("workflow.run.id") == run_id and s["name"].startswith(prefix)
    ]


def _carrier(app: dict[str, Any], scenario: str) -> tuple[str, str]:
    run = json.loads((app["data"] / "runs" / f"{app['report'][scenario]['run_id']}.json").read_text())
    _, trace_id, span_id, _ = run["executionContext"]["traceCarrier"]["traceparent"].split("-")
    return "0x" + trace_id, "0x" + span_id


def test_world_spans_are_named_as_the_sdk_names_them(instrumented_app):
    names = {s["name"] for s in instrumented_app["spans"]}
    world = {n for n in names if n.startswith("world.")}
    sdk = set(WORLD_SPANS.values())
    assert {n.split(" ")[0] for n in world} <= sdk
    for expected in (
        "world.runs.get",
        "world.steps.get",
        "world.events.list",
        "world.events.create run_created",
        "world.events.create step_completed",
        "world.events.create step_retrying",
        "world.events.create wait_completed",
        "world.events.create hook_received",
        "world.streams.writeToStream",
        "world.streams.closeStream",
        "world.streams.listStreamsByRunId",
    ):
        assert expected in names
    for span in instrumented_app["spans"]:
        if span["name"].startswith("world."):
            assert span["kind"] == "SpanKind.CLIENT"
            assert span["attributes"]["rpc.service"] == "world-local" and span["attributes"]["rpc.system"] == "local"
            assert span["attributes"]["rpc.method"] == span["name"]


def test_each_run_is_one_trace_stitched_to_its_stored_traceparent(instrumented_app):
    """The run record's executionContext.traceCarrier (what runtrace joins) parents every delivery span."""
    for scenario, facts in instrumented_app["report"].items():
        trace_id, span_id = _carrier(instrumented_app, scenario)
        starts = [s for s in _of_run(instrumented_app, scenario, "workflow.start ")]
        assert [s["context"]["span_id"] for s in starts] == [span_id], scenario
        deliveries = _of_run(instrumented_app, scenario, "WORKFLOW ") + _of_run(instrumented_app, scenario, "STEP ")
        assert deliveries, scenario
        for span in deliveries:
            assert span["context"]["trace_id"] == trace_id and span["parent_id"] == span_id, (scenario, span["name"])
            assert span["kind"] == "SpanKind.CONSUMER"
        delivery_ids = {s["context"]["span_id"] for s in deliveries}
        inside = [s for s in instrumented_app["spans"] if s["parent_id"] in delivery_ids]
        assert inside and all(s["context"]["trace_id"] == trace_id for s in inside)
        assert all(
            s["attributes"].get("workflow.run.id") == facts["run_id"]
            for s in inside
            if s["name"].startswith("world.events.create")
        )


def test_step_spans_match_what_vercel_workflow_reports(instrumented_app):
    report = instrumented_app["report"]
    for scenario, facts in report.items():
        steps = _of_run(instrumented_app, scenario, "STEP ")
        for step_id, step in facts["steps"].items():
            attempts = sorted(
                (s for s in steps if s["attributes"].get("step.id") == step_id),
                key=lambda s: s["attributes"]["step.attempt"],
            )
            assert [s["attributes"]["step.attempt"] for s in attempts] == list(range(1, step["attempt"] + 1))
            assert all(s["name"] == f"STEP {step['name']}" for s in attempts)
            last = attempts[-1]
            assert last["attributes"]["step.status"] == step["status"]
            assert (last["status"]["status_code"] == "ERROR") == (step["status"] == "failed")
            for earlier in attempts[:-1]:  # a retried attempt is handled: status Unset, the failure in attributes
                assert earlier["status"]["status_code"] == "UNSET"
                assert earlier["attributes"]["step.retry.will_retry"] is True
                assert [e["name"] for e in earlier["events"]] == ["exception", "retry.scheduled"]


def test_failure_facts_on_step_and_workflow_spans(instrumented_app):
    doomed = sorted(_of_run(instrumented_app, "fatal", "STEP "), key=lambda s: s["attributes"]["step.attempt"])
    assert [s["attributes"]["step.error.name"] for s in doomed] == ["ValueError", "FatalError"]
    assert doomed[1]["attributes"]["step.error.message"] == "order ord_42 cannot be charged"
    assert doomed[1]["status"]["description"] == "FatalError: order ord_42 cannot be charged"
    failing = _of_run(instrumented_app, "failing", "WORKFLOW ")
    final = [s for s in failing if s["attributes"].get("workflow.run.status") == "failed"]
    assert len(final) == 1 and final[0]["status"]["status_code"] == "ERROR"
    assert final[0]["attributes"]["error.type"] == "USER_ERROR"
    for scenario in ("sequential", "fan_out", "fatal", "sleeper", "streaming"):
        workflow = _of_run(instrumented_app, scenario, "WORKFLOW ")
        assert all(s["status"]["status_code"] != "ERROR" for s in workflow), scenario
        assert [s["attributes"].get("workflow.run.status") for s in workflow].count("completed") == 1


def test_world_failures_go_through_throw_with_trace(instrumented_app):
    """``racing``: the straggler re-queues its finished run; ``run_started`` on it is a real EntityConflictError."""
    conflicts = [
        s
        for s in _of_run(instrumented_app, "racing", "world.events.create run_started")
        if s["status"]["status_code"] == "ERROR"
    ]
    assert conflicts
    for span in conflicts:
        assert span["attributes"]["error.type"] == "EntityConflictError"
        assert span["events"][0]["name"] == "exception"
        assert span["events"][0]["attributes"]["exception.type"].endswith("EntityConflictError")


def test_stream_writes_and_the_late_one_are_spans(instrumented_app):
    late = [s for s in _of_run(instrumented_app, "racing", "world.streams.writeToStream")]
    assert len(late) == 1 and late[0]["status"]["status_code"] == "UNSET"  # world-local accepts it silently
    completed = [s for s in _of_run(instrumented_app, "racing", "world.events.create run_completed")]
    assert completed and late[0]["start_time"] > completed[0]["end_time"]
    # the same race a 409 tells on the Vercel world: benign, and said to be after the run's end
    assert late[0]["attributes"]["workflow.conflict"] == "benign"
    assert late[0]["attributes"]["workflow.stream.after_run_end"] is True
    assert late[0]["attributes"]["error.type"] == "EntityConflictError" and late[0]["events"] == []
    in_time = [s for s in instrumented_app["spans"] if s["name"].startswith("world.streams.") and s not in late]
    assert in_time and not [s for s in in_time if "workflow.conflict" in s["attributes"]]
    closes = _of_run(instrumented_app, "streaming", "world.streams.closeStream")
    assert len(closes) == 1 and closes[0]["parent_id"] in {
        s["context"]["span_id"] for s in _of_run(instrumented_app, "streaming", "STEP ")
    }


def test_a_local_write_after_the_run_ended_is_benign_and_counted(instrumentor, tmp_path, monkeypatch, caplog):
    """vercel-workflow's local world stores a write to a finished run without a word; the instrumentor, having
    seen the run end through the world, records the write as the benign race it is: DEBUG log, status Unset,
    ``workflow.conflict="benign"``, counted. The chunks are stored all the same."""
    from vercel.workflow._internal import world as w

    inst, provider, exporter = instrumentor
    monkeypatch.setenv("WORKFLOW_LOCAL_DATA_DIR", str(tmp_path))
    inst.instrument(tracer_provider=provider)
    world = _classes()[0]()
    created = w.RunCreatedEventData(deployment_id="dpl_local", workflow_name="workflow//app//f", input=b"[]")

    async def scenario() -> str:
        run_id = (await world.events_create(None, created.into_event())).run.run_id
        await world.events_create(run_id, w.RunStartedEventData().into_event())
        stream = f"strm_{run_id.removeprefix('wrun_')}_user"
        await world.streams_write(run_id, stream, b"in time")
        await world.events_create(run_id, w.RunCompletedEventData(output=b"[]").into_event())
        await world.streams_write(run_id, stream, b"late")
        await world.streams_write_multi(run_id, stream, [b"later", b"still"])
        await world.streams_close(run_id, stream)
        assert len((await world.streams_get_chunks(run_id, stream)).data) == 4  # stored, as the world does
        return run_id

    with caplog.at_level(logging.DEBUG, logger="telemetry.conflicts"):
        run_id = asyncio.run(scenario())
    writes = [
        s for s in exporter.get_finished_spans() if s.name.startswith("world.streams.") and "Chunks" not in s.name
    ]
    assert [(s.name, s.attributes.get("workflow.conflict")) for s in writes] == [
        ("world.streams.writeToStream", None),
        ("world.streams.writeToStream", "benign"),
        ("world.streams.writeToStreamMulti", "benign"),
        ("world.streams.closeStream", "benign"),
    ]
    for span in writes:
        assert span.status.status_code is trace.StatusCode.UNSET and not span.events
        assert span.attributes["workflow.run.id"] == run_id
    assert all(s.attributes["workflow.stream.after_run_end"] is True for s in writes[1:])
    assert benign_counts() == {"EntityConflictError": 3}
    logged = [r for r in caplog.records if r.name == "telemetry.conflicts"]
    assert len(logged) == 3 and all(r.levelno == logging.DEBUG and run_id in r.getMessage() for r in logged)


# ---- the Vercel world's post-completion 409 -----------------------------------------------------


@pytest.fixture
def workflow_server(monkeypatch):
    """Loopback stand-in for workflow-server's stream endpoint: 409 for a finished run, 500 for ``broken``."""
    seen: list[str] = []

    async def put_stream(request: web.Request) -> web.Response:
        await request.read()
        run_id = request.match_info["run_id"]
        seen.append(run_id)
        if request.match_info["name"].endswith("broken"):
            return web.json_response({"success": False, "error": "internal"}, status=500)
        message = f'Run "{run_id}" is already completed'
        return web.json_response({"success": False, "error": "conflict", "message": message}, status=409)

    app = web.Application()
    app.router.add_put("/api/v2/runs/{run_id}/stream/{name}", put_stream)
    url, stop = serve_in_thread(app)
    monkeypatch.setenv("VERCEL_WORKFLOW_SERVER_URL", url)
    yield seen
    stop()


RUN = "wrun_01M8PCQ3HVMYEK75KZ635GRYY4"
STREAM = "strm_01M8PCQ3HVMYEK75KZ635GRYY4_user"


def test_vercel_world_post_completion_stream_conflict_is_benign(instrumentor, workflow_server):
    inst, provider, exporter = instrumentor
    inst.instrument(tracer_provider=provider)
    world = _classes()[1](token="test-token")
    assert asyncio.run(world.streams_write(RUN, STREAM, b"late")) is None  # recorded, not raised into the step
    assert asyncio.run(world.streams_write_multi(RUN, STREAM, [b"a", b"b"])) is None
    assert asyncio.run(world.streams_close(RUN, STREAM)) is None
    assert workflow_server == [RUN, RUN, RUN]  # the real client really made the requests
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [
        "world.streams.writeToStream",
        "world.streams.writeToStreamMulti",
        "world.streams.closeStream",
    ]
    for span in spans:
        assert span.status.status_code is trace.StatusCode.UNSET
        assert span.attributes["workflow.conflict"] == "benign" and span.attributes["error.type"] == "HTTP 409"
        assert span.attributes["rpc.service"] == "workflow-server" and span.attributes["workflow.run.id"] == RUN
        assert not [e for e in span.events if e.name == "exception"]
    assert benign_counts() == {"HTTP 409": 3}


def test_vercel_world_other_stream_failures_stay_errors(instrumentor, workflow_server):
    from vercel.workflow import WorkflowWorldError

    inst, provider, exporter = instrumentor
    inst.instrument(tracer_provider=provider, raise_benign_stream_conflicts=True)
    world = _classes()[1](token="test-token")
    with pytest.raises(WorkflowWorldError) as conflict:
        asyncio.run(world.streams_write(RUN, STREAM, b"late"))
    assert conflict.value.status == 409  # the SDK's raise kept on request, still recorded benign
    with pytest.raises(WorkflowWorldError) as broken:
        asyncio.run(world.streams_write(RUN, STREAM + "_broken", b"x"))
    assert broken.value.status == 500
    benign, error = exporter.get_finished_spans()
    assert benign.attributes["workflow.conflict"] == "benign" and benign.status.status_code is trace.StatusCode.UNSET
    assert error.status.status_code is trace.StatusCode.ERROR and error.attributes["error.type"] == "HTTP 500"
    assert "workflow.conflict" not in error.attributes
    assert benign_counts() == {"HTTP 409": 1}
