"""Run → trace on small fixtures cut from real world-local output, bent into the untidy shapes
real logs take (duplicates, late events, ends without starts)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pytest

from telemetry.backends.local import LocalWorld
from telemetry.reading import event_log
from telemetry.runtrace import anomaly_counts, build_run_trace, short_name, trace_id_for
from telemetry.world import Event

CUT = Path(__file__).parent / "fixtures" / "local-cut"
SUMMARY = json.loads((CUT / "summary.json").read_text())


def _load(key: str):
    world = LocalWorld(CUT)
    run_id = SUMMARY[key]["runId"]

    async def go():
        return await world.runs.get(run_id), await event_log(world, run_id)

    return asyncio.run(go())


def _names(trace):
    return sorted(s.name for s in trace.spans)


def test_short_name():
    assert short_name("workflow//./workflows/demo//sequentialWorkflow") == "sequentialWorkflow"
    assert short_name("plain") == "plain"


def test_trace_id_is_the_run_ulid_without_a_carrier():
    run, events = _load("retry")
    trace = build_run_trace(run.run_id, events, run)
    assert trace.trace_id == trace_id_for(run.run_id)
    from ulid import ULID

    assert trace.trace_id == int(ULID.from_str(run.run_id[5:]))
    assert f"{trace.trace_id:032x}".upper()[:12] == f"{int(ULID.from_str(run.run_id[5:])):032X}"[:12]


def test_stored_traceparent_joins_the_sdk_trace():
    run, events = _load("retry")
    carried = dataclasses.replace(
        run,
        execution_context={"traceCarrier": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
    )
    trace = build_run_trace(run.run_id, events, carried)
    assert {s.context.trace_id for s in trace.spans} == {0x4BF92F3577B34DA6A3CE929D0E0E4736}
    (root,) = [s for s in trace.spans if s.name.startswith("run ")]
    assert root.parent.span_id == 0x00F067AA0BA902B7 and root.parent.is_remote
    # malformed carriers fall back to the ULID
    bad = dataclasses.replace(run, execution_context={"traceCarrier": {"traceparent": "00-zz-yy-01"}})
    assert build_run_trace(run.run_id, events, bad).trace_id == trace_id_for(run.run_id)


def test_live_run_yields_finished_work_and_the_run_span_follows():
    run, events = _load("retry")
    cut = [e for e in events if e.event_type != "run_completed"]
    live = build_run_trace(run.run_id, cut, dataclasses.replace(run, status="running"))
    assert not live.complete
    assert not [s for s in live.spans if s.name.startswith("run ")]
    assert _names(live) == sorted(["step flakyOnce", "attempt 1", "attempt 2", "step stamp", "attempt 1"])
    # a step still running has no span yet; its first (failed) attempt does
    mid = [e for e in events if not (e.event_type == "step_completed" or e.event_type.startswith("run_completed"))]
    partial = build_run_trace(
        run.run_id, mid[: mid.index(next(e for e in mid if e.event_type == "step_retrying")) + 2], run
    )
    assert _names(partial) == ["attempt 1"]
    done = build_run_trace(run.run_id, events, run)
    assert done.complete
    live_ids = {s.context.span_id for s in live.spans}
    assert live_ids < {s.context.span_id for s in done.spans}  # same ids once finished


def _shift(event: Event, ms: int, **changes) -> Event:
    return dataclasses.replace(event, created_at=event.created_at + timedelta(milliseconds=ms), **changes)


def test_duplicates_late_events_and_missing_starts_are_anomalies_not_errors():
    run, events = _load("fatal")
    before = anomaly_counts()
    step_failed = next(e for e in events if e.event_type == "step_failed")
    terminal = events[-1]
    untidy = [
        *events,
        events[3],  # a duplicate event (same id)
        _shift(step_failed, 5, event_id="evnt_ZZZZZZZZZZZZZZZZZZZZZZZZZ1"),  # a second terminal for the same step
        _shift(
            terminal,
            9,
            event_id="evnt_ZZZZZZZZZZZZZZZZZZZZZZZZZ2",
            event_type="step_completed",
            correlation_id="step_NOSTARTNOSTARTNOSTARTNOST",
            event_data={"stepName": "step//./x//ghost"},
        ),
        _shift(terminal, 10, event_id="evnt_ZZZZZZZZZZZZZZZZZZZZZZZZZ3", event_type="noop", event_data={}),
    ]
    trace = build_run_trace(run.run_id, untidy, run)
    roots = [s for s in trace.spans if s.name.startswith("run ")]
    assert len(roots) == 1
    assert trace.anomalies["duplicate_event"] == 1
    assert trace.anomalies["after_terminal"] == 3  # the duplicate counts only as a duplicate
    assert trace.anomalies["missing_start"] == 1
    assert trace.anomalies["after_step_end"] == 1
    assert trace.anomalies["unknown_event_type"] == 1
    assert roots[0].attributes["workflow.anomalies"] == sum(trace.anomalies.values())
    marks = [e for s in trace.spans for e in s.events if e.name == "workflow.anomaly"]
    assert len(marks) == 6  # every anomaly but the unknown type, which is kept as its own span event
    assert [e.name for e in roots[0].events].count("noop") == 1
    ghost = next(s for s in trace.spans if s.name == "step ghost")
    assert ghost.parent.span_id == roots[0].context.span_id
    assert roots[0].attributes["workflow.run.status"] == "failed"
    after = anomaly_counts()
    assert after.get("duplicate_event", 0) - before.get("duplicate_event", 0) == 1


def test_terminal_run_without_any_start():
    run, events = _load("sleep")
    only_end = [events[-1]]
    trace = build_run_trace(run.run_id, only_end, run)
    (root,) = trace.spans
    assert root.name == "run sleepWorkflow" and trace.anomalies["missing_run_created"] == 1
    assert root.start_time == root.end_time


def test_open_work_is_closed_at_run_end():
    run, events = _load("hook")
    without_receipt = [e for e in events if e.event_type != "hook_received"]
    trace = build_run_trace(run.run_id, without_receipt, run)
    (hook,) = [s for s in trace.spans if s.name.startswith("hook ")]
    (root,) = [s for s in trace.spans if s.name.startswith("run ")]
    assert hook.end_time == root.end_time and hook.attributes["workflow.closed_by_run_end"] is True
    assert hook.attributes["workflow.hook.token"] == SUMMARY["hook"]["token"]


def test_payloads_can_be_left_out():
    run, events = _load("retry")
    trace = build_run_trace(run.run_id, events, run, include_payloads=False)
    keys = {k for s in trace.spans for k in s.attributes}
    assert not keys & {"workflow.input", "workflow.output", "step.input", "step.output"}
    with_payloads = build_run_trace(run.run_id, events, run)
    assert {k for s in with_payloads.spans for k in s.attributes} >= {
        "workflow.input",
        "workflow.output",
        "step.input",
        "step.output",
    }


@pytest.mark.parametrize("key", ["retry", "fatal", "sleep", "hook"])
def test_fixture_cut_is_complete(key):
    run, events = _load(key)
    assert run.status == SUMMARY[key]["status"]
    assert build_run_trace(run.run_id, events, run).complete
