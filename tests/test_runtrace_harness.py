"""Every harness scenario, rebuilt from the real SDK's event log on both worlds."""

from __future__ import annotations

import asyncio
import json

from opentelemetry.trace import StatusCode

from telemetry.payloads import to_jsonable
from telemetry.reading import event_log, run_trace
from telemetry.runtrace import trace_id_for

# Arguments the harness driver starts each scenario with (sdk-harness/app/driver.mjs).
DRIVER_ARGS = {
    "sequential": [5],
    "parallel": [["alpha", "beta", "gamma"]],
    "retry": ["r1"],
    "fatal": ["boom"],
    "sleep": [],
    "webhook": [],
    "stream": [5],
    "eagerCloseInline": [],
    "eagerCloseViaStep": [],
    "writeAfterClose": [],
}


def _trace(world, run_id):
    async def go():
        run = await world.runs.get(run_id)
        steps = []
        cursor = None
        while True:
            from telemetry.world import Pagination

            page = await world.steps.list(run_id=run_id, pagination=Pagination(limit=100, cursor=cursor))
            steps.extend(page.data)
            if not page.has_more:
                break
            cursor = page.cursor
        return run, steps, await run_trace(world, run), await event_log(world, run_id)

    return asyncio.run(go())


def _by_kind(trace):
    run_spans = [s for s in trace.spans if s.name.startswith("run ")]
    steps = [s for s in trace.spans if s.name.startswith("step ")]
    attempts = [s for s in trace.spans if s.name.startswith("attempt ")]
    return run_spans, steps, attempts


def test_every_scenario_rebuilds(real_world):
    kind, world, results = real_world
    assert set(DRIVER_ARGS) | {"hook"} <= set(results)
    for scenario, result in results.items():
        run, step_records, trace, events = _trace(world, result["runId"])
        run_spans, steps, attempts = _by_kind(trace)
        assert trace.complete, scenario
        assert len(run_spans) == 1, scenario
        (root,) = run_spans
        # run status, name, ids
        assert root.attributes["workflow.run.status"] == result["status"] == run.status, scenario
        assert root.attributes["workflow.name"] == result["workflowName"]
        assert root.attributes["workflow.run.id"] == result["runId"]
        assert root.attributes["deployment.id"] == run.deployment_id
        assert root.parent is None  # no OTel in the app: no carrier, the run is the root
        assert root.context.trace_id == trace_id_for(run.run_id)
        # steps: one span per step record, attempts equal to the record's attempt count
        assert sorted(s.attributes["step.id"] for s in steps) == sorted(r.step_id for r in step_records), scenario
        for record in step_records:
            (span,) = [s for s in steps if s.attributes["step.id"] == record.step_id]
            assert span.attributes["step.attempt"] == record.attempt
            assert span.attributes["step.status"] == record.status
            assert span.attributes["step.name"] == record.step_name
            assert span.parent.span_id == root.context.span_id
            mine = [a for a in attempts if a.parent.span_id == span.context.span_id]
            assert len(mine) == record.attempt
            assert span.start_time <= min(a.start_time for a in mine) and span.end_time >= max(a.end_time for a in mine)
        # timestamps from events, to the millisecond
        assert root.start_time == min(int(round(e.created_at.timestamp() * 1000)) * 10**6 for e in events)
        assert all(s.end_time >= s.start_time for s in trace.spans)
        # decoded payloads equal the driver's
        if scenario in DRIVER_ARGS:
            assert to_jsonable(run.input) == DRIVER_ARGS[scenario]
            assert json.loads(root.attributes["workflow.input"]) == DRIVER_ARGS[scenario]
        if result["status"] == "completed":
            assert to_jsonable(run.output) == result["returnValue"], scenario
            assert json.loads(root.attributes["workflow.output"]) == result["returnValue"], scenario
        # every event is accounted for somewhere in the trace
        recorded = {ev.attributes.get("event.id") for s in trace.spans for ev in s.events}
        started = {e.event_id for e in events if e.event_type == "step_started"}
        assert {e.event_id for e in events} - started <= recorded, scenario


def test_hook_input_is_the_doc_id(real_world):
    _, world, results = real_world
    hook = results["hook"]
    run, _, trace, _ = _trace(world, hook["runId"])
    assert to_jsonable(run.input) == [hook["token"].split(":", 1)[1]]
    assert to_jsonable(run.output) == hook["returnValue"] == {"decision": "approved", "by": "alice"}


def test_retry_has_two_attempts_and_only_the_first_is_error(real_world):
    _, world, results = real_world
    _, _, trace, events = _trace(world, results["retry"]["runId"])
    run_spans, steps, attempts = _by_kind(trace)
    (flaky,) = [s for s in steps if s.attributes["step.name"].endswith("//flakyOnce")]
    first, second = sorted(
        (a for a in attempts if a.parent.span_id == flaky.context.span_id), key=lambda a: a.start_time
    )
    assert (first.attributes["step.attempt"], second.attributes["step.attempt"]) == (1, 2)
    assert first.status.status_code is StatusCode.ERROR
    assert "flaky failure on attempt 1" in first.status.description
    (exc,) = [e for e in first.events if e.name == "exception"]
    assert exc.attributes["exception.type"] == "Error"
    assert "flaky failure on attempt 1" in exc.attributes["exception.message"]
    retrying = next(e for e in events if e.event_type == "step_retrying")
    if "retryAfter" in retrying.event_data:
        assert first.attributes["step.retry_after"]
    # the delay is on the attempt that came after it: the retried one was final when it ended
    assert second.attributes["step.retry.delay_ms"] == (second.start_time - first.end_time) // 10**6
    assert not any(k.startswith("step.retry.") for k in first.attributes)
    assert second.status.status_code is StatusCode.UNSET
    assert flaky.status.status_code is StatusCode.UNSET and run_spans[0].status.status_code is StatusCode.UNSET
    gap_ms = (second.start_time - first.end_time) / 1e6
    assert 500 < gap_ms < 5000  # the ~1 s retry delay shows as a gap between attempts


def test_fatal_run_and_step_carry_the_error(real_world):
    _, world, results = real_world
    fatal = results["fatal"]
    _, _, trace, _ = _trace(world, fatal["runId"])
    (root,), steps, attempts = _by_kind(trace)
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["error.type"] == fatal["error"]["code"] == "USER_ERROR"
    (exc,) = [e for e in root.events if e.name == "exception"]
    assert exc.attributes["exception.message"] == fatal["error"]["message"] == "fatal: boom"
    assert exc.attributes["exception.type"] == "FatalError"
    assert exc.attributes["exception.stacktrace"].startswith("FatalError: fatal: boom")
    (failed,) = [s for s in steps if s.status.status_code is StatusCode.ERROR]
    assert failed.attributes["step.name"].endswith("//alwaysFatal")
    assert failed.attributes["step.status"] == "failed" and failed.attributes["error.type"] == "FatalError"
    ok = [s for s in steps if s is not failed]
    assert ok and all(s.status.status_code is StatusCode.UNSET for s in ok)


def test_sleep_and_hooks(real_world):
    _, world, results = real_world
    _, _, sleep_trace, _ = _trace(world, results["sleep"]["runId"])
    (sleep,) = [s for s in sleep_trace.spans if s.name == "sleep"]
    assert 900 <= (sleep.end_time - sleep.start_time) / 1e6 < 5000  # sleep("1s")
    assert sleep.attributes["workflow.wait.resume_at"].endswith("Z")
    hook_result = results["hook"]
    _, _, hook_trace, _ = _trace(world, hook_result["runId"])
    (hook,) = [s for s in hook_trace.spans if s.name.startswith("hook ")]
    assert hook.attributes["workflow.hook.token"] == hook_result["token"]
    assert hook.attributes["workflow.hook.received"] == 1
    (receipt,) = [e for e in hook.events if e.name == "hook_received"]
    assert json.loads(receipt.attributes["workflow.hook.payload"]) == {"approved": True, "reviewer": "alice"}
    assert hook.attributes["workflow.hook.is_webhook"] is False
    _, _, webhook_trace, _ = _trace(world, results["webhook"]["runId"])
    (webhook,) = [s for s in webhook_trace.spans if s.name.startswith("hook ")]
    assert webhook.attributes["workflow.hook.is_webhook"] is True


def test_rebuilding_gives_identical_ids(real_world):
    _, world, results = real_world
    run_id = results["parallel"]["runId"]
    first = _trace(world, run_id)[2]
    second = _trace(world, run_id)[2]
    assert [(s.context.trace_id, s.context.span_id, s.name) for s in first.spans] == [
        (s.context.trace_id, s.context.span_id, s.name) for s in second.spans
    ]
    assert len({s.context.span_id for s in first.spans}) == len(first.spans)


def test_a_span_sent_live_is_the_span_export_sends(harness_out):
    """Every prefix of every real log: each span the builder gives for the prefix is, content
    included, the span the whole log gives under that id (a follower sends the prefix's spans, and
    an OTLP backend keeps both copies of an id sent twice). A retried attempt, given as soon as it
    failed, once gained ``step.retry.delay_ms`` when the next attempt started; the delay is now on
    the next attempt."""
    from telemetry.backends.local import LocalWorld
    from telemetry.runtrace import RunTraceBuilder

    def content(span):
        return (span.name, span.parent_span_id, span.start_time, span.end_time, sorted(span.attributes.items()))

    def built(run, events):
        builder = RunTraceBuilder(run.run_id, run)
        builder.feed(events)
        return builder.span_data()

    async def logs():
        world = LocalWorld(harness_out / "local-data")
        out = []
        page = await world.runs.list()
        for run in page.data:
            out.append((run, await event_log(world, run.run_id)))
        return out

    checked = retried = 0
    for run, events in asyncio.run(logs()):
        final = {s.span_id: content(s) for s in built(run, events)}
        for cut in range(1, len(events)):
            for span in built(run, events[:cut]):
                assert content(span) == final[span.span_id], (run.run_id, cut, span.name)
                checked += 1
                retried += span.attributes.get("step.attempt.outcome") == "retrying"
    assert checked > 100 and retried > 0
