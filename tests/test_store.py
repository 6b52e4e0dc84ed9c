"""collector.store, used directly: what a commit leaves in the runs table, from real event logs
arriving whole, in pieces, twice, out of order, over OTLP, and from app spans alone."""

from __future__ import annotations

import sqlite3

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from collector.otlp import records_from
from collector.policy import apply_benign_policy
from collector.store import Store, decode_waits
from collector.summaries import Wait

from .sdk_spans import RUN, make_sdk_spans
from .world_spans import SCENARIOS, RunLog, commit, commit_run, cut_run, run_row

SUMMARY = ("status", "workflow_name", "start_ns", "end_ns", "steps", "errors", "benign", "trace_id", "waiting")


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store.sqlite3")


def row(store: Store, run_id: str) -> tuple[object, ...]:
    got = run_row(store, run_id)
    return tuple(got[k] for k in SUMMARY)


def span_count(store: Store) -> int:
    conn = store.connect()
    try:
        return int(conn.execute("SELECT count(*) FROM spans").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_finished_run_from_the_tailer(store, scenario):
    log = cut_run(scenario)
    commit_run(store, log)
    got = run_row(store, log.run_id)
    run = next(r for r in log.records() if r.attributes["workflow.span.kind"] == "run")
    assert got["status"] == got["world_status"] == SCENARIOS[scenario]["status"]
    assert got["workflow_name"] == SCENARIOS[scenario]["workflowName"]
    assert (got["start_ns"], got["end_ns"], got["trace_id"]) == (run.start_ns, run.end_ns, run.trace_id)
    assert got["steps"] == 2 and got["errors"] == {"fatal": 1, "retry": 1}.get(scenario, 0)
    assert got["waiting"] is None and got["events_cursor"] == log.events[-1].event_id


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_event_log_spans_over_otlp_summarize_like_the_tailers(tmp_path, scenario):
    """Which way the spans came (``source``) does not matter, their ``workflow.span.kind`` does."""
    log = cut_run(scenario)
    tailed, exported = Store(tmp_path / "a.sqlite3"), Store(tmp_path / "b.sqlite3")
    commit(tailed, log.records())
    commit_run(exported, log, source="otlp")
    assert row(exported, log.run_id) == row(tailed, log.run_id)
    assert run_row(exported, log.run_id)["errors"] == {"fatal": 1, "retry": 1}.get(scenario, 0)


def test_a_run_the_world_names_before_any_span_or_event(store):
    log = cut_run("sleep")
    commit(store, runs=[log.info("pending")])
    got = run_row(store, log.run_id)
    assert (got["status"], got["steps"], got["errors"], got["end_ns"], got["trace_id"]) == ("pending", 0, 0, None, None)
    assert got["start_ns"] == log.info().created_ns and got["workflow_name"] == SCENARIOS["sleep"]["workflowName"]


def test_a_run_with_only_app_spans(store):
    records = records_from(encode_spans(make_sdk_spans(3)))[0]
    for record in records:
        apply_benign_policy(record)
    commit(store, records)
    got = run_row(store, RUN)
    assert (got["status"], got["steps"], got["errors"], got["benign"]) == ("running", 3, 1, 1)
    assert got["start_ns"] == min(r.start_ns for r in records) and got["end_ns"] is None


def test_resent_spans_leave_one_copy_whichever_way_they_come(store):
    log = cut_run("retry")
    commit_run(store, log)
    before = row(store, log.run_id)
    commit(store, log.records(source="otlp"))  # `wft export` of the same world into the same collector
    commit_run(store, log)
    assert span_count(store) == len(log.records())
    assert row(store, log.run_id)[:-1] == before[:-1]


def test_spans_arriving_out_of_order_end_in_the_same_row(tmp_path):
    log = cut_run("fatal")
    in_order, reversed_ = Store(tmp_path / "a.sqlite3"), Store(tmp_path / "b.sqlite3")
    commit(in_order, log.records())
    # the run span first, then the others latest first
    records = sorted(log.records(), key=lambda r: (r.attributes["workflow.span.kind"] != "run", -r.start_ns))
    for i, record in enumerate(records):
        commit(reversed_, [record])
        got = run_row(reversed_, log.run_id)
        assert got["status"] == "failed" and got["errors"] == 1, i  # the run span decided from the start
    assert row(reversed_, log.run_id) == row(in_order, log.run_id)


def test_a_live_run_commit_by_commit_as_the_tailer_delivers_it(store):
    """One commit per event, each with the whole log so far (the follower resends it) and the new spans."""
    log = cut_run("hook")
    created, received = log.index("hook_created"), log.index("hook_received")
    sent: set[str] = set()
    for i in range(len(log.events)):
        fresh = [r for r in log.records(upto=i) if r.span_id not in sent]
        sent |= {r.span_id for r in fresh}
        status = "completed" if i == len(log.events) - 1 else "running"
        commit(store, fresh, log.event_rows(upto=i), [log.info(status)])
        got = run_row(store, log.run_id)
        waits = tuple(w for w in decode_waits(got["waiting"]) if w.kind == "hook")  # steps: test_summaries
        if created <= i < received:
            (wait,) = waits
            assert wait == Wait("hook", log.events[created].correlation_id, wait.since_ns, token=wait.token)
            assert wait.token == log.events[created].event_data["token"]
        else:
            assert waits == (), i
        assert got["status"] == status and got["events_cursor"] == log.events[i].event_id
        assert (got["end_ns"] is None) == (status == "running")
    assert row(store, log.run_id) == row(_whole(log, store.path.with_name("whole.sqlite3")), log.run_id)


def test_new_events_only_give_the_same_waits(store):
    """A follower that sends only what is new (one event per commit) folds to the same answer."""
    log = cut_run("sleep")
    created = log.index("wait_created")
    for i in range(created + 1):
        commit(store, events=log.event_rows(start=i, upto=i), runs=[log.info("running")])
    (wait,) = decode_waits(run_row(store, log.run_id)["waiting"])
    assert wait.kind == "sleep" and wait.resume_at and wait.id == log.events[created].correlation_id


def test_midrun_snapshot_runs_wait_on_their_open_hook_and_sleep(store, harness_out):
    midrun = harness_out / "local-data-midrun"
    waits = {}
    for path in sorted((midrun / "runs").glob("*.json")):
        log = RunLog(midrun, path.stem)
        commit_run(store, log)
        waits[log.run.workflow_name.rsplit("//", 1)[-1]] = (
            run_row(store, log.run_id),
            decode_waits(run_row(store, log.run_id)["waiting"]),
        )
    hook_row, (hook,) = waits["hookWorkflow"]
    assert hook_row["status"] == "running" and hook.kind == "hook" and hook.token.startswith("approval:")
    assert (midrun / "hooks" / f"{hook.id}.json").exists()  # the world still holds the hook open
    sleep_row, (sleep,) = waits["sleepWorkflow"]
    assert sleep_row["status"] == "running" and sleep.kind == "sleep" and sleep.resume_at
    assert list((midrun / "waits").glob(f"*{sleep.id}.json"))
    retry_row, retry_waits = waits["retryWorkflow"]
    assert (retry_row["status"], retry_row["errors"], retry_row["steps"]) == ("running", 1, 1)
    assert [w.kind for w in retry_waits] == ["retry"]  # between its failed attempt and the next
    for name, (got, open_waits) in waits.items():
        if got["status"] != "running":
            assert open_waits == () and got["end_ns"] is not None, name


def test_a_store_from_before_the_waiting_columns_is_upgraded(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE runs (
          run_id TEXT PRIMARY KEY, workflow_name TEXT, status TEXT, start_ns INTEGER, end_ns INTEGER,
          steps INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, benign INTEGER NOT NULL DEFAULT 0,
          trace_id TEXT, world_status TEXT, updated_ns INTEGER NOT NULL
        );
        INSERT INTO runs (run_id, status, updated_ns) VALUES ('wrun_old', 'completed', 1);
        """
    )
    conn.close()
    store = Store(path)
    old = run_row(store, "wrun_old")
    assert old["status"] == "completed" and old["waiting"] is None and old["events_cursor"] is None
    log = cut_run("hook")
    commit(store, events=log.event_rows(upto=log.index("hook_created")), runs=[log.info("running")])
    assert decode_waits(run_row(store, log.run_id)["waiting"])[0].kind == "hook"
    Store(path)  # opening again adds nothing twice


def _whole(log: RunLog, path) -> Store:
    whole = Store(path)
    commit(whole, log.records(), log.event_rows(), [log.info()])
    return whole
