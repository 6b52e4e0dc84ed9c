"""collector.waterfall, called directly: rows from ``workflow.span.kind`` (never from names or
from how spans came), attempts as segments with their retry backoff, open rows for what a live run
waits on, why a failed run failed, and the SDK's own spans on the run's time axis (real ones, with
the polling and other runs' spans left out)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import zstandard
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from collector.otlp import SpanRecord, records_from
from collector.store import Store
from collector.waterfall import PageSpan, waterfall
from telemetry.span_blobs import BLOB_FIELDS

from . import otel_cut
from .conftest import summary
from .sdk_spans import RUN, make_sdk_spans
from .world_spans import SCENARIOS, RunLog, commit, commit_run, cut_run, ns


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store.sqlite3")


def view(store: Store, run_id: str, now_ns: int | None = None):
    conn = store.connect()
    try:
        return waterfall(conn, run_id, now_ns=now_ns)
    finally:
        conn.close()


def shape(rows):
    return [(r["kind"], r["name"], len(r["segments"]), bool(r.get("open"))) for r in rows]


@pytest.mark.parametrize("source", ["world", "otlp"])
def test_finished_runs_one_row_per_entity(store, source):
    for scenario in SCENARIOS:
        commit_run(store, cut_run(scenario), source=source)
    hook = SCENARIOS["hook"]
    assert shape(view(store, SCENARIOS["retry"]["runId"])["rows"]) == [
        ("run", "run retryWorkflow", 0, False),
        ("step", "step flakyOnce", 2, False),
        ("step", "step stamp", 1, False),
    ]
    assert shape(view(store, SCENARIOS["sleep"]["runId"])["rows"]) == [
        ("run", "run sleepWorkflow", 0, False),
        ("step", "step stamp", 1, False),
        ("sleep", "sleep", 0, False),
        ("step", "step stamp", 1, False),
    ]
    rows = view(store, hook["runId"])["rows"]
    (hook_row,) = [r for r in rows if r["kind"] == "hook"]
    assert hook_row["name"].startswith("hook approval:") and [m["name"] for m in hook_row["marks"]] == ["hook_received"]
    fatal = view(store, SCENARIOS["fatal"]["runId"])
    assert fatal["run"]["status"] == "failed" and fatal["run"]["errors"] == 1
    (failed,) = [r for r in fatal["rows"] if r["status"] == 2 and r["kind"] == "step"]
    assert failed["stepStatus"] == "failed" and [g["status"] for g in failed["segments"]] == [2]
    assert fatal["sdk"] == [] and fatal["t0"] == min(r.start_ns for r in cut_run("fatal").records())


def test_a_retried_step_has_both_attempts_as_segments(store):
    log = cut_run("retry")
    commit_run(store, log)
    (flaky,) = [r for r in view(store, log.run_id)["rows"] if r["name"] == "step flakyOnce"]
    assert flaky["attempts"] == 2 and flaky["stepStatus"] == "completed"
    assert [(g["n"], g["status"]) for g in flaky["segments"]] == [(1, 2), (2, 0)]
    assert flaky["segments"][0]["s"] < flaky["segments"][1]["s"] and not flaky.get("open")


def test_a_step_being_retried_has_an_open_row_until_its_span_comes(store):
    log = cut_run("retry")
    cut = log.index("step_retrying")
    commit(store, log.records(upto=cut), log.event_rows(upto=cut), [log.info("running")])
    (attempt,) = log.records(upto=cut)  # all there is: the failed first attempt
    now = attempt.end_ns + 2_000_000_000
    data = view(store, log.run_id, now_ns=now)
    run, row = data["rows"]  # the run (open: no run span yet), the step being retried
    assert run["kind"] == "run" and run["open"]
    assert row["kind"] == "step" and row["open"] and row["name"] == "step flakyOnce"
    assert row["id"] == attempt.span_id and row["attempts"] == 1  # the label opens the latest attempt
    assert [(g["id"], g["status"]) for g in row["segments"]] == [(attempt.span_id, 2)]
    assert row["s"] + row["d"] == pytest.approx((now - data["t0"]) / 1e6)  # drawn up to now while live
    commit_run(store, log)
    assert [r for r in view(store, log.run_id)["rows"] if r.get("open")] == []


@pytest.mark.parametrize(("scenario", "opens"), [("hook", "hook_created"), ("sleep", "wait_created")])
def test_what_a_live_run_waits_on_is_an_open_row(store, scenario, opens):
    log = cut_run(scenario)
    cut = log.index(opens)
    commit(store, log.records(upto=cut), log.event_rows(upto=cut), [log.info("running")])
    since = ns(log.events[cut].created_at)
    data = view(store, log.run_id, now_ns=since + 1_500_000_000)
    kind = "hook" if scenario == "hook" else "sleep"
    (row,) = [r for r in data["rows"] if r.get("open") and r["kind"] == kind]
    assert row["kind"] == kind and row["id"] is None and row["d"] == 1500.0
    assert row["s"] == round((since - data["t0"]) / 1e6, 3) and row["s"] >= max(r["s"] for r in data["rows"])
    if kind == "hook":
        assert row["name"] == "hook " + log.events[cut].event_data["token"] and row["resumeAt"] is None
    else:
        assert row["name"] == "sleep" and row["resumeAt"]
    assert [w["kind"] for w in data["run"]["waitingOn"]] == [kind]
    commit_run(store, log)
    done = view(store, log.run_id)
    assert [r for r in done["rows"] if r.get("open")] == [] and [r for r in done["rows"] if r["kind"] == kind]


def test_a_run_between_turns_has_an_open_next_turn_row(store):
    log = cut_run("sleep")
    cut = log.index("wait_completed")
    commit(store, log.records(upto=cut), log.event_rows(upto=cut), [log.info("running")])
    since = ns(log.events[cut].created_at)
    data = view(store, log.run_id, now_ns=since + 2_000_000_000)
    (row,) = [r for r in data["rows"] if r.get("open") and r["kind"] == "turn"]
    assert row["name"] == "next turn" and row["d"] == 2000.0 and row["s"] == round((since - data["t0"]) / 1e6, 3)
    assert [w["kind"] for w in data["run"]["waitingOn"]] == ["turn"]


def test_a_run_with_only_app_spans_has_no_rows(store):
    records = records_from(encode_spans(make_sdk_spans(2)))[0]
    commit(store, records)
    data = view(store, RUN)
    (run,) = data["rows"]  # the run is live as far as anyone knows: an open row, no span rows
    assert run["kind"] == "run" and run["open"] and run["name"] == "run demo"
    assert len(data["sdk"]) == len(records) and data["failure"] is None
    depth = {s["name"]: s["depth"] for s in data["sdk"]}
    assert depth["WORKFLOW demo"] == 0 and depth["STEP s0"] == depth["STEP s1"] == 1
    assert data["t0"] == min(r.start_ns for r in records) and data["eventsCount"] == 0


def test_a_run_known_only_to_the_world_and_an_unknown_run(store):
    log = cut_run("sleep")
    commit(store, runs=[log.info("pending")])
    data = view(store, log.run_id)
    assert [(r["kind"], r["s"], r.get("open")) for r in data["rows"]] == [("run", 0.0, True)]
    assert data["sdk"] == [] and data["t0"] == log.info().created_ns
    assert data["run"]["status"] == "pending"
    assert view(store, "wrun_nope") is None


def test_resent_and_reordered_spans_draw_the_same(tmp_path):
    log = cut_run("retry")
    once, twice = Store(tmp_path / "a.sqlite3"), Store(tmp_path / "b.sqlite3")
    commit(once, log.records())
    for record in reversed(log.records()):  # attempts before their step, the run span last
        commit(twice, [record])
    commit(twice, log.records(source="otlp"))
    first, second = view(once, log.run_id), view(twice, log.run_id)
    assert first["rows"] == second["rows"] and first["t0"] == second["t0"]


# ---- the SDK's own spans on the run's time axis (real spans: tests/otel_cut.py) -----------------------


def _sdk_view(store: Store, scenario: str) -> tuple[dict, list[SpanRecord]]:
    otel_cut.commit_everything(store)
    return view(store, otel_cut.SCENARIOS[scenario]["runId"]), otel_cut.sdk_records()


@pytest.mark.parametrize("scenario", ["fatal", "retry", "hook"])
def test_sdk_spans_sit_on_the_run_axis_at_their_real_times(store, scenario):
    data, records = _sdk_view(store, scenario)
    run_id = otel_cut.SCENARIOS[scenario]["runId"]
    by_id = {(r.trace_id, r.span_id): r for r in records}
    assert data["sdk"], scenario
    for item in data["sdk"]:
        record = by_id[(item["trace"], item["id"])]
        assert item["s"] == round((record.start_ns - data["t0"]) / 1e6, 3)
        assert item["d"] == round((record.end_ns - record.start_ns) / 1e6, 3)
    # the axis starts where the run's work starts: the app's workflow.start, before the run_created event
    (start,) = [r for r in records if r.name.startswith("workflow.start") and r.run_id == run_id]
    assert data["t0"] == start.start_ns
    run_row = data["rows"][0]
    assert run_row["kind"] == "run" and run_row["s"] > 0  # the event log's run span starts later, on the same axis
    names = {i["name"].split(" ")[0] for i in data["sdk"]}
    assert {"workflow.start", "WORKFLOW", "STEP", "world.events.create", "queue.publish"} <= names


def test_sdk_spans_are_a_tree_each_under_its_parent(store):
    data, _ = _sdk_view(store, "retry")
    position = {(i["trace"], i["id"]): n for n, i in enumerate(data["sdk"])}
    records = {(r.trace_id, r.span_id): r for r in otel_cut.sdk_records()}
    for n, item in enumerate(data["sdk"]):
        parent = (item["trace"], records[(item["trace"], item["id"])].parent_span_id)
        if parent in position:
            assert position[parent] < n and item["depth"] == data["sdk"][position[parent]]["depth"] + 1
        else:
            assert item["depth"] == 0


def test_polling_spans_are_left_out_and_the_hooks_resume_kept(store):
    """The driver asked ``world.runs.get`` about each run a few times a second, each time in a trace of
    its own: none of that is on the run's axis. The hook's resume, also from another trace, is the run's."""
    data, records = _sdk_view(store, "hook")
    run_id = otel_cut.SCENARIOS["hook"]["runId"]
    run_trace = data["rows"][0]["trace"]
    polls = [r for r in records if r.run_id == run_id and r.name == "world.runs.get" and not r.parent_span_id]
    assert len(polls) >= 3 and all(r.trace_id != run_trace for r in polls)
    shown = {(i["trace"], i["id"]) for i in data["sdk"]}
    assert not shown & {(r.trace_id, r.span_id) for r in polls}
    (resume,) = [r for r in records if r.name == "hook.resume"]
    assert resume.trace_id != run_trace and (resume.trace_id, resume.span_id) in shown
    # with what it did: reads of the world too, made for the resume, not to poll
    under = [r for r in records if r.trace_id == resume.trace_id and r.span_id != resume.span_id]
    assert any(r.name.startswith("world.") for r in under)
    assert {(r.trace_id, r.span_id) for r in under} <= shown
    # the reads the run itself made (in its own trace) stay: replays load its events
    assert any(i["name"] == "world.events.list" and i["trace"] == run_trace for i in data["sdk"])
    assert all(i["trace"] == run_trace or i["trace"] == resume.trace_id for i in data["sdk"])


def test_spans_of_another_run_in_the_same_trace_are_left_out(store):
    """A step that starts a child workflow puts the child's spans in the parent's trace (the real
    retry run's spans, moved under the fatal run's step): they are the child's, not the parent's."""
    otel_cut.commit_everything(store)
    fatal = otel_cut.SCENARIOS["fatal"]["runId"]
    parent_view = view(store, fatal)
    step = next(i for i in parent_view["sdk"] if i["name"].startswith("STEP "))
    child = otel_cut.SCENARIOS["retry"]["runId"]
    moved = [r for r in otel_cut.sdk_records() if r.trace_id == view(store, child)["rows"][0]["trace"]]
    assert moved and any(r.run_id is None for r in moved)  # some of the child's spans carry no run id
    for record in moved:
        record.trace_id = step["trace"]
        record.span_id = "c" + record.span_id[1:]
        if record.parent_span_id:
            record.parent_span_id = "c" + record.parent_span_id[1:]
        else:
            record.parent_span_id = step["id"]
    commit(store, moved)
    after = view(store, fatal)
    assert [i["id"] for i in after["sdk"]] == [i["id"] for i in parent_view["sdk"]]
    child_view = view(store, child)
    assert {r.span_id for r in moved if r.run_id == child} <= {i["id"] for i in child_view["sdk"]}


# ---- why a run failed, at the top of its page -----------------------------------------------------------


def test_a_failed_run_says_why_which_step_and_attempt(store):
    commit_run(store, cut_run("fatal"))
    failure = view(store, SCENARIOS["fatal"]["runId"])["failure"]
    expected = SCENARIOS["fatal"]["error"]
    assert failure["status"] == "failed" and failure["code"] == expected["code"] == "USER_ERROR"
    assert failure["type"] == "FatalError" and failure["message"] == expected["message"] == "fatal: boom"
    assert failure["stack"] == expected["stack"]
    step = failure["step"]
    assert step["name"] == "alwaysFatal" and step["attempt"] == 1 and step["stepId"].startswith("step_")
    row = next(r for r in view(store, SCENARIOS["fatal"]["runId"])["rows"] if r["id"] == step["spanId"])
    assert row["kind"] == "step" and row["status"] == 2
    for scenario in ("retry", "sleep", "hook"):  # finished well: nothing to say
        commit_run(store, cut_run(scenario))
        assert view(store, SCENARIOS[scenario]["runId"])["failure"] is None


def test_a_run_failing_in_the_workflow_function_names_no_step(store, harness_out):
    expected = summary(harness_out, "local")["eagerCloseInline"]
    log = RunLog(harness_out / "local-data", expected["runId"])
    commit_run(store, log)
    failure = view(store, log.run_id)["failure"]
    assert failure["step"] is None and failure["message"] == expected["error"]["message"]
    assert failure["type"] == "Error" and failure["code"] == "USER_ERROR" and failure["stack"]


def test_a_failure_only_the_sdk_spans_tell(store):
    """No event-log spans (no tailer, no export): the app's own failed span says why."""
    records = [r for r in otel_cut.sdk_records() if r.run_id == otel_cut.SCENARIOS["fatal"]["runId"]]
    run = otel_cut.run_log("fatal")
    commit(store, records, runs=[run.info("failed")])
    failure = view(store, run.run_id)["failure"]
    assert failure["status"] == "failed" and failure["step"] is None
    holder = next(r for r in records if r.span_id == failure["spanId"])
    assert holder.status_code == 2 and holder.name.startswith("workflow.run ")
    assert failure["message"] == otel_cut.SCENARIOS["fatal"]["error"]["message"] == "fatal: boom"


# ---- a live run: what it waits on, as open rows ---------------------------------------------------------


def test_a_live_run_has_an_open_run_row_until_its_span_comes(store):
    log = cut_run("sleep")
    cut = log.index("wait_created")
    commit(store, log.records(upto=cut), log.event_rows(upto=cut), [log.info("running")])
    now = ns(log.events[cut].created_at) + 5_000_000_000
    data = view(store, log.run_id, now_ns=now)
    run = data["rows"][0]
    assert run["kind"] == "run" and run["open"] and run["id"] is None and run["name"] == "run sleepWorkflow"
    assert run["s"] + run["d"] == pytest.approx(data["now"]) and data["now"] == round((now - data["t0"]) / 1e6, 3)
    commit_run(store, log)
    done = view(store, log.run_id)
    assert done["now"] is None and not done["rows"][0].get("open")


@pytest.mark.parametrize(("opens", "state"), [("step_created", "queued"), ("step_started", "running")])
def test_a_step_queued_or_running_is_an_open_row_from_its_wait(store, opens, state):
    log = cut_run("retry")
    cut = log.index(opens)
    commit(store, log.records(upto=cut), log.event_rows(upto=cut), [log.info("running")])
    since = ns(log.events[cut].created_at)
    data = view(store, log.run_id, now_ns=since + 3_000_000_000)
    (row,) = [r for r in data["rows"] if r["kind"] == "step"]
    assert row["open"] and row["name"] == "step flakyOnce" and row["stepStatus"] == state
    assert row["s"] == round((since - data["t0"]) / 1e6, 3) and row["d"] == 3000.0
    assert row["wait"]["kind"] == ("queued" if state == "queued" else "step")
    if state == "running":  # the attempt running now is drawn up to now
        (segment,) = row["segments"]
        assert segment["open"] and segment["n"] == 1 and segment["d"] == 3000.0
    else:
        assert row["segments"] == []


def test_a_step_between_attempts_shows_the_pending_retry(store):
    log = cut_run("retry")
    cut = log.index("step_retrying")
    commit(store, log.records(upto=cut), log.event_rows(upto=cut), [log.info("running")])
    data = view(store, log.run_id, now_ns=ns(log.events[cut].created_at) + 1_000_000_000)
    (row,) = [r for r in data["rows"] if r["kind"] == "step"]
    assert row["stepStatus"] == "retrying" and row["wait"]["kind"] == "retry" and row["wait"]["attempt"] == 2
    assert [(g["n"], g["status"]) for g in row["segments"]] == [(1, 2)]  # the failed attempt, then the gap


def test_retry_gaps_carry_their_backoff(store):
    log = cut_run("retry")
    commit_run(store, log)
    (flaky,) = [r for r in view(store, log.run_id)["rows"] if r["name"] == "step flakyOnce"]
    first, second = flaky["segments"]
    retry = next(r for r in log.records() if r.attributes.get("step.attempt") == 2 and r.name == "attempt 2")
    # the delay is the retry's: the gap before the second attempt
    assert second["retryMs"] == retry.attributes["step.retry.delay_ms"] > 0
    assert second["retryMs"] == pytest.approx(second["s"] - (first["s"] + first["d"]), abs=1)
    assert first["retryMs"] is None


# ---- how the page reads its spans: only what it shows, straight from the span blobs ------------------------


def test_page_spans_are_read_in_the_blobs_field_order():
    """``PageSpan`` decodes a blob's span lists by position: a change of ``BLOB_FIELDS`` must change it too."""
    assert PageSpan.__struct_fields__ == BLOB_FIELDS


def _with_an_unshown_nan(records: list[SpanRecord]) -> list[SpanRecord]:
    """The spans with one more attribute the page does not show, a NaN: their blobs are CBOR (JSON has
    no NaN), read the store's own way."""
    return [dataclasses.replace(r, attributes={**r.attributes, "unshown": math.nan}) for r in records]


def test_a_run_read_the_stores_way_draws_the_same_as_read_from_json(tmp_path):
    """Page spans (JSON blobs, only the shown fields decoded) and the store's own decoder (CBOR blobs)
    give the same waterfall, for real runs with the app's spans stitched in: rows, SDK spans, failure."""
    plain, cbor = Store(tmp_path / "json.sqlite3"), Store(tmp_path / "cbor.sqlite3")
    otel_cut.commit_everything(plain)
    for scenario in otel_cut.SCENARIOS:
        log = otel_cut.run_log(scenario)
        commit(cbor, _with_an_unshown_nan(log.records()), log.event_rows(), [log.info()])
    commit(cbor, _with_an_unshown_nan(otel_cut.sdk_records()))
    conn = cbor.connect()
    try:
        blobs = [zstandard.ZstdDecompressor().decompress(row[0]) for row in conn.execute("SELECT data FROM blobs")]
        assert blobs and all(blob[:1] != b"[" for blob in blobs)  # none is JSON
    finally:
        conn.close()
    for scenario, expected in otel_cut.SCENARIOS.items():
        now = 2_000_000_000_000_000_000
        read, stored = view(plain, expected["runId"], now), view(cbor, expected["runId"], now)
        assert read == stored and read["rows"] and read["sdk"], scenario
    assert view(plain, otel_cut.SCENARIOS["fatal"]["runId"])["failure"]["step"]
