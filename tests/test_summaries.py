"""collector.summaries: the rules of a run's row, called directly on real spans and events, and
the runs list over OTLP (``wft export`` into a collector, the real exporter end to end)."""

from __future__ import annotations

import dataclasses
import json
import random
import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from collector.otlp import SpanRecord, records_from
from collector.policy import apply_benign_policy
from collector.summaries import (
    EVENT_LOG_SCOPE,
    TURN_ID,
    SpanFacts,
    Wait,
    WaitKinds,
    WorldView,
    duration_ms,
    entity_kind,
    fold_waits,
    shown_waits,
    summarize_run,
)
from telemetry.runtrace import short_name
from telemetry.semconv import SpanKinds

from .conftest import get_json, summary, wft
from .sdk_spans import RUN, make_sdk_spans
from .world_spans import SCENARIOS, RunLog, cut_run, ns


def facts(records: list[SpanRecord]) -> list[SpanFacts]:
    return [
        SpanFacts.from_attributes(r.trace_id, r.span_id, r.start_ns, r.end_ns, r.status_code, r.benign, r.attributes)
        for r in records
    ]


def app_records() -> list[SpanRecord]:
    """The real OpenTelemetry SDK's spans for RUN, with the collector's benign policy applied."""
    records = records_from(encode_spans(make_sdk_spans(3)))[0]
    for record in records:
        apply_benign_policy(record)
    return records


def test_entity_kind_accepts_only_the_span_kinds():
    assert [entity_kind(k) for k in SpanKinds.ALL] == list(SpanKinds.ALL)
    for other in (None, "", "Run", "workflow", 1, ["run"]):
        assert entity_kind(other) is None


def test_every_event_log_span_is_an_entity_and_carries_the_runtrace_scope():
    for scenario in SCENARIOS:
        records = cut_run(scenario).records(source="otlp")
        assert records and all(f.kind is not None for f in facts(records))
        assert {r.scope for r in records} == {EVENT_LOG_SCOPE}
    assert all(f.kind is None for f in facts(app_records()))


def test_an_empty_run_is_running_with_nothing_counted():
    empty = summarize_run("wrun_x", [])
    assert (empty.status, empty.steps, empty.errors, empty.benign) == ("running", 0, 0, 0)
    assert empty.start_ns is None and empty.end_ns is None and empty.duration_ms is None and empty.trace_id is None
    known = summarize_run("wrun_x", [], WorldView("pending", "workflow//./w//demo", 5))
    assert (known.status, known.workflow_name, known.start_ns, known.end_ns) == (
        "pending",
        "workflow//./w//demo",
        5,
        None,
    )


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_finished_runs_from_their_real_event_logs(scenario):
    log = cut_run(scenario)
    records = log.records()
    result = summarize_run(log.run_id, facts(records))
    (run,) = [r for r in records if r.attributes["workflow.span.kind"] == "run"]
    steps = [r for r in records if r.attributes["workflow.span.kind"] == "step"]
    assert result.status == SCENARIOS[scenario]["status"]
    assert result.workflow_name == SCENARIOS[scenario]["workflowName"]
    assert result.errors == {"fatal": 1, "retry": 1}.get(scenario, 0)
    assert result.steps == len(steps) == 2
    assert (result.start_ns, result.end_ns, result.trace_id) == (run.start_ns, run.end_ns, run.trace_id)
    assert result.duration_ms == (run.end_ns - run.start_ns) / 1e6 > 0
    assert result.benign == 0 and result.waiting == ()


def test_a_retried_step_counts_its_failed_attempt_once():
    log = cut_run("retry")
    live = summarize_run(log.run_id, facts(log.records(upto=log.index("step_retrying"))))
    assert (live.status, live.steps, live.errors, live.end_ns) == ("running", 1, 1, None)  # only the attempt so far
    done = summarize_run(log.run_id, facts(log.records()))
    assert (done.status, done.steps, done.errors) == ("completed", 2, 1)


def test_each_failure_counts_once_at_its_finest_grain():
    """The fatal run, whole and with spans missing (retention can drop any of them)."""
    everything = facts(cut_run("fatal").records())
    failed = [f for f in everything if f.status_code == 2]
    assert sorted(f.kind for f in failed) == ["attempt", "run", "step"]
    assert summarize_run("r", everything).errors == 1
    no_attempts = [f for f in everything if f.kind != "attempt"]
    assert summarize_run("r", no_attempts).errors == 1  # the failed step
    only_run = [f for f in everything if f.kind == "run"]
    assert summarize_run("r", only_run).errors == 1  # the failed run


def test_duplicates_and_arrival_order_change_nothing():
    log = cut_run("retry")
    once = facts(log.records())
    expected = summarize_run(log.run_id, once)
    shuffled = once * 2
    random.Random(7).shuffle(shuffled)
    assert summarize_run(log.run_id, shuffled) == expected
    assert summarize_run(log.run_id, list(reversed(once))) == expected


def test_the_run_span_arriving_first_decides_status_and_end():
    log = cut_run("fatal")
    everything = facts(log.records())
    (run,) = [f for f in everything if f.kind == "run"]
    first = summarize_run(log.run_id, [run], WorldView("running"))
    assert (first.status, first.end_ns, first.errors, first.steps) == ("failed", run.end_ns, 1, 0)


def test_the_world_decides_status_until_the_run_span_arrives():
    log = cut_run("sleep")
    steps_only = [f for f in facts(log.records()) if f.kind != "run"]
    assert summarize_run(log.run_id, steps_only).status == "running"
    finished = summarize_run(log.run_id, steps_only, WorldView("completed"))
    assert finished.status == "completed"
    assert finished.end_ns == max(f.end_ns for f in steps_only)  # the best we know before the run span


def test_a_run_with_only_app_spans_is_summed_up_from_them():
    records = app_records()
    result = summarize_run(RUN, facts(records))
    assert result.status == "running"  # no span says otherwise, and no world
    assert result.steps == 3  # their step.id attributes
    assert result.errors == 1  # the real error; the benign conflict was downgraded
    assert result.benign == 1
    assert result.workflow_name == "workflow//./w//demo"
    assert result.start_ns == min(r.start_ns for r in records) and result.end_ns is None


def test_app_spans_do_not_count_once_the_event_log_is_there():
    log = cut_run("sleep")
    mixed = facts(log.records()) + facts(app_records())
    result = summarize_run(log.run_id, mixed)
    assert (result.status, result.steps, result.errors) == ("completed", 2, 0)
    assert result.benign == 1  # benign conflicts are counted over every span


def test_duration():
    assert duration_ms(1_000_000, 3_500_000) == 2.5
    assert duration_ms(None, 5) is None and duration_ms(5, None) is None


# ---- what a run waits on ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "opens", "closes"),
    [("hook", "hook_created", "hook_received"), ("sleep", "wait_created", "wait_completed")],
)
def test_a_hook_or_sleep_is_waited_on_until_it_resolves(scenario, opens, closes):
    log = cut_run(scenario)
    cut = log.index(opens)
    waiting, cursor = fold_waits((), None, log.event_rows(upto=cut))
    (wait,) = waiting
    created = log.events[cut]
    assert wait.id == created.correlation_id and wait.since_ns == ns(created.created_at)
    if scenario == "hook":
        assert wait.kind == SpanKinds.HOOK and wait.token == created.event_data["token"] and wait.resume_at is None
    else:
        assert wait.kind == SpanKinds.SLEEP and wait.token is None
        assert wait.resume_at == created.event_data["resumeAt"].isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"
        )
    assert cursor == created.event_id
    rest, cursor = fold_waits(waiting, cursor, log.event_rows(start=cut + 1, upto=log.index(closes)))
    closed = log.events[log.index(closes)]
    assert cursor == closed.event_id
    if scenario == "hook":  # still open after its payload: the workflow may await another
        assert rest == (Wait(WaitKinds.PAYLOAD, wait.id, ns(closed.created_at), token=wait.token),)
    else:  # nothing else open: the run waits for its workflow's next turn, since the sleep ended
        assert rest == (Wait(WaitKinds.TURN, TURN_ID, ns(closed.created_at)),)
    # the whole log again (a follower resends it): nothing reopens, and the run's end ends every wait
    again, cursor_again = fold_waits(rest, cursor, log.event_rows())
    assert again == () and cursor_again == log.events[-1].event_id


def test_folding_in_pieces_or_out_of_order_equals_folding_at_once():
    log = cut_run("hook")
    rows = log.event_rows(upto=log.index("hook_created"))
    whole = fold_waits((), None, rows)
    assert fold_waits((), None, list(reversed(rows))) == whole
    waiting, cursor = (), None
    for row in rows:
        waiting, cursor = fold_waits(waiting, cursor, [row])
    assert (waiting, cursor) == whole


def test_the_run_ending_clears_every_wait():
    log = cut_run("hook")
    waiting, cursor = fold_waits((), None, log.event_rows(upto=log.index("hook_created")))
    assert waiting
    end = log.index("run_completed")
    assert fold_waits(waiting, cursor, log.event_rows(start=end, upto=end))[0] == ()


def test_event_data_that_is_not_json_leaves_a_wait_without_details():
    log = cut_run("hook")
    (row,) = log.event_rows(start=log.index("hook_created"), upto=log.index("hook_created"))
    row.data = "{not json"
    (wait,) = fold_waits((), None, [row])[0]
    assert wait.kind == "hook" and wait.token is None


def test_a_finished_run_waits_on_nothing_and_waits_survive_storage():
    wait = Wait(SpanKinds.SLEEP, "wait_x", 10, resume_at="2026-11-30T14:06:55.874Z")
    assert Wait.from_record(json.loads(json.dumps(wait.to_record()))) == wait
    assert summarize_run("r", [], WorldView("running"), [wait]).waiting == (wait,)
    assert summarize_run("r", [], WorldView("completed"), [wait]).waiting == ()


def _steps(waits):
    return [(w.kind, w.name, w.attempt) for w in waits if w.kind in (WaitKinds.QUEUED, WaitKinds.STEP, WaitKinds.RETRY)]


def test_a_step_is_waited_on_queued_running_and_between_attempts():
    """The real retry run, event by event: created → queued, started → running attempt 1, retrying →
    retry 2 pending (since the failure), started → running attempt 2, completed → nothing."""
    log = cut_run("retry")
    flaky = "step//./workflows/demo//flakyOnce"
    expected = {
        "step_created": [("queued", flaky, None)],
        "step_started": [("step", flaky, 1)],
        "step_retrying": [("retry", flaky, 2)],
    }
    waiting, cursor = (), None
    started = 0
    for i, event in enumerate(log.events):
        waiting, cursor = fold_waits(waiting, cursor, log.event_rows(start=i, upto=i))
        kind = event.event_type
        if event.correlation_id != log.events[log.index("step_created")].correlation_id:
            continue
        if kind == "step_started":
            started += 1
            assert _steps(waiting) == [("step", flaky, started)], i
            assert waiting[0].since_ns == ns(event.created_at)
        elif kind in expected:
            assert _steps(waiting) == expected[kind], i
        elif kind == "step_completed":
            assert _steps(waiting) == [], i
    assert started == 2


def test_resending_a_log_does_not_undo_a_steps_state():
    """A follower resends the whole log: a step's earlier transitions (retrying, after which it started
    again) must not count a second time, or the running attempt would turn back into a pending retry."""
    log = cut_run("retry")
    upto = log.index("step_started", 1)  # the second attempt has started
    waiting, cursor = fold_waits((), None, log.event_rows(upto=upto))
    assert _steps(waiting) == [("step", "step//./workflows/demo//flakyOnce", 2)]
    again = fold_waits(waiting, cursor, log.event_rows(upto=upto))
    assert again == (waiting, cursor)


def test_a_retry_waits_until_the_worlds_retry_after():
    log = cut_run("retry")
    (row,) = log.event_rows(start=log.index("step_retrying"), upto=log.index("step_retrying"))
    data = json.loads(row.data or "{}")
    data["retryAfter"] = "2026-11-22T03:38:49.000Z"  # what a world that keeps it writes (4.8 local does not)
    row.data = json.dumps(data)
    (wait,) = fold_waits((), None, [row])[0]
    assert (wait.kind, wait.resume_at, wait.attempt) == ("retry", "2026-11-22T03:38:49.000Z", 2)


def test_midrun_waits_name_the_step_running_and_the_retry(harness_out):
    """The harness's mid-run snapshot: one run is in a step's attempt, one between attempts."""
    midrun = harness_out / "local-data-midrun"
    found = {}
    for path in sorted((midrun / "runs").glob("*.json")):
        log = RunLog(midrun, path.stem)
        found[short_name(log.run.workflow_name)] = fold_waits((), None, log.event_rows())[0]
    (step,) = found["eagerCloseViaStepWorkflow"]
    assert (step.kind, short_name(step.name or ""), step.attempt) == ("step", "slowAfterClose", 1)
    (retry,) = found["retryWorkflow"]
    assert (retry.kind, short_name(retry.name or ""), retry.attempt) == ("retry", "flakyOnce", 2)
    assert [w.kind for w in found["hookWorkflow"]] == ["hook"] and [w.kind for w in found["sleepWorkflow"]] == ["sleep"]
    assert found["sequentialWorkflow"] == ()


def test_waits_survive_storage_with_every_field():
    wait = Wait(WaitKinds.RETRY, "step_x", 10, resume_at="2026-11-30T14:06:55.874Z", name="step//a//b", attempt=3)
    assert Wait.from_record(json.loads(json.dumps(wait.to_record()))) == wait
    assert Wait.from_record({"kind": "step", "id": "s", "since_ns": 1, "attempt": True}).attempt is None


# ---- the runs list over OTLP -----------------------------------------------------------------


def test_failed_runs_exported_over_otlp_count_their_errors(collector, harness_out):
    """``wft export`` sends the event-log spans over OTLP (nothing from a tailer): failed runs
    still count their errors, every status and step count is the event log's."""
    service = collector()
    result = wft("export", "--world", "local", "--dir", str(harness_out / "local-data"), "--otlp", service.url)
    assert result.returncode == 0, result.stderr
    expected = summary(harness_out, "local")
    deadline = time.monotonic() + 10
    while True:
        runs = {r["runId"]: r for r in get_json(f"{service.url}/api/runs?limit=100")["data"]}
        if len(runs) >= len(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    failed = [name for name, r in expected.items() if r["status"] == "failed"]
    assert failed, "the harness has failed runs"
    for name, run in expected.items():
        got = runs[run["runId"]]
        assert got["status"] == run["status"], name
        assert got["workflowName"] == run["workflowName"], name
        assert got["durationMs"] is not None and got["durationMs"] > 0, name
        assert got["waitingOn"] == [], name
        if name in failed or name == "retry":
            assert got["errors"] == 1, name
        else:
            assert got["errors"] == 0, name
        view = get_json(f"{service.url}/api/runs/{run['runId']}")
        assert got["steps"] == sum(1 for s in view["spans"] if s["attributes"].get("workflow.span.kind") == "step")


# ---- between turns: nothing open, the workflow's next turn awaited ------------------------------------


@pytest.mark.parametrize("scenario", ["retry", "fatal", "sleep", "hook"])
def test_a_run_with_nothing_open_waits_on_its_next_turn(scenario):
    """The real logs event by event: whenever nothing is open and the run has not ended (queued to
    start, started, a step done and the next not created yet, a sleep ended), the run waits on its
    next turn since that event; never while something else is open, never once it ended. A turn
    lost there (the queue dropped it) leaves the run waiting on it, so it shows as stuck."""
    log = cut_run(scenario)
    waiting, cursor = (), None
    turns = []
    for i, event in enumerate(log.events):
        waiting, cursor = fold_waits(waiting, cursor, log.event_rows(start=i, upto=i))
        turn = [w for w in waiting if w.kind == WaitKinds.TURN]
        others = [w for w in waiting if w.kind != WaitKinds.TURN]
        if event.event_type in ("run_completed", "run_failed"):
            assert waiting == (), i
        elif others:
            assert turn == [], i
        else:
            assert turn == [Wait(WaitKinds.TURN, TURN_ID, ns(event.created_at))], i
            turns.append(event.event_type)
    assert turns[:2] == ["run_created", "run_started"] and "step_completed" in turns
    # the whole log resent to a run cut after a step: the same turn, since the same event
    done = log.index("step_completed")
    cut, at = fold_waits((), None, log.event_rows(upto=done))
    assert cut == (Wait(WaitKinds.TURN, TURN_ID, ns(log.events[done].created_at)),)
    assert fold_waits(cut, at, log.event_rows(upto=done)) == (cut, at)


def test_a_hook_after_its_payload_is_shown_only_while_nothing_else_is_open():
    """With the SDK 4.x a hook stays open until the run ends: after a payload the workflow may await
    another (no turn is assumed) or go on; once it goes on, its step is what the run is shown
    waiting on. Disposing of the hook closes it, and then the run waits on its next turn."""
    log = cut_run("hook")
    received = log.index("hook_received")
    waiting, cursor = fold_waits((), None, log.event_rows(upto=received))
    (payload,) = waiting
    assert (
        payload.kind == WaitKinds.PAYLOAD and payload.token == log.events[log.index("hook_created")].event_data["token"]
    )
    assert shown_waits(waiting) == waiting
    created = next(i for i in range(received, len(log.events)) if log.events[i].event_type == "step_created")
    moved, _ = fold_waits(waiting, cursor, log.event_rows(start=received + 1, upto=created))
    assert {w.kind for w in moved} == {WaitKinds.PAYLOAD, WaitKinds.QUEUED}
    assert [w.kind for w in shown_waits(moved)] == [WaitKinds.QUEUED]
    # the harness's runs never dispose of a hook before they end: the received event, as its disposal
    disposed = dataclasses.replace(
        log.event_rows(start=received, upto=received)[0], event_type="hook_disposed", event_id=cursor + "1"
    )
    closed, _ = fold_waits(waiting, cursor, [disposed])
    assert closed == (Wait(WaitKinds.TURN, TURN_ID, disposed.created_ns),)
