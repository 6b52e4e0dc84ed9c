"""collector.queries, called directly on a store holding real runs: the runs list and its paging,
a run's stitched view, lookups by run or trace id, events, spans, bad parameters."""

from __future__ import annotations

import json

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from collector.otlp import SpanRecord, records_from
from collector.queries import (
    QueryError,
    check_trace_url_template,
    list_runs,
    lookup_run,
    parse_time,
    run_events,
    run_view,
    span_detail,
    trace_spans,
    trace_url,
)
from collector.store import Store
from collector.waterfall import waterfall

from . import otel_cut
from .conftest import get_json, http, wft
from .sdk_spans import RUN, make_sdk_spans
from .world_spans import SCENARIOS, commit, commit_run, cut_run, ns


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store.sqlite3")


@pytest.fixture
def loaded(store):
    """Every run of the cut, as the tailer delivers it."""
    for scenario in SCENARIOS:
        commit_run(store, cut_run(scenario))
    conn = store.connect()
    yield conn
    conn.close()


def app_span_in(record: SpanRecord) -> list[SpanRecord]:
    """A real SDK span the app made inside a run's trace (it had the run's traceparent), without a run id."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    parent = SpanContext(int(record.trace_id, 16), int(record.span_id, 16), True, TraceFlags(TraceFlags.SAMPLED))
    with provider.get_tracer("workflow").start_as_current_span(
        "queue.publish", context=set_span_in_context(NonRecordingSpan(parent))
    ):
        pass
    provider.shutdown()
    return records_from(encode_spans(memory.get_finished_spans()))[0]


def test_runs_newest_first_with_their_summary(loaded):
    page = list_runs(loaded)
    assert [r["runId"] for r in page["data"]] == sorted((r["runId"] for r in SCENARIOS.values()), reverse=True)
    assert page["hasMore"] is False and page["cursor"] is None
    for scenario, expected in SCENARIOS.items():
        got = next(r for r in page["data"] if r["runId"] == expected["runId"])
        assert (got["status"], got["workflowName"]) == (expected["status"], expected["workflowName"]), scenario
        run = next(r for r in cut_run(scenario).records() if r.attributes["workflow.span.kind"] == "run")
        assert got["startNs"] == run.start_ns and got["durationMs"] == round((run.end_ns - run.start_ns) / 1e6) > 0
        assert got["startedAt"].endswith("Z") and got["completedAt"] > got["startedAt"]
        assert got["steps"] == 2 and got["waitingOn"] == [] and got["traceId"]


def test_paging_walks_every_run_once_and_filters_combine(loaded):
    seen, cursor = [], None
    while True:
        page = list_runs(loaded, limit=1, cursor=cursor)
        seen += [r["runId"] for r in page["data"]]
        if not page["hasMore"]:
            break
        cursor = page["cursor"]
    assert sorted(seen) == sorted(r["runId"] for r in SCENARIOS.values()) and len(seen) == len(set(seen))
    assert [r["runId"] for r in list_runs(loaded, status="failed")["data"]] == [SCENARIOS["fatal"]["runId"]]
    assert [r["runId"] for r in list_runs(loaded, workflow="sleepWorkflow")["data"]] == [SCENARIOS["sleep"]["runId"]]
    assert list_runs(loaded, status="failed", workflow="sleepWorkflow")["data"] == []
    for wildcard in ("sleep_orkflow", "%Workflow", "sleepworkflow", "Workflow"):  # literal, whole last part
        assert list_runs(loaded, workflow=wildcard)["data"] == [], wildcard
    full = SCENARIOS["hook"]["workflowName"]
    assert [r["runId"] for r in list_runs(loaded, workflow=full)["data"]] == [SCENARIOS["hook"]["runId"]]
    newest = list_runs(loaded, limit=1)["data"][0]
    assert list_runs(loaded, since=newest["startedAt"])["data"] == [newest]
    assert newest not in list_runs(loaded, until=newest["startedAt"])["data"]


def test_a_live_run_lists_what_it_waits_on(store):
    log = cut_run("hook")
    created = log.index("hook_created")
    commit(store, log.records(upto=created), log.event_rows(upto=created), [log.info("running")])
    conn = store.connect()
    (run,) = list_runs(conn)["data"]
    assert run["status"] == "running" and run["completedAt"] is None and run["durationMs"] is None
    (wait,) = run["waitingOn"]
    event = log.events[created]
    assert wait["kind"] == "hook" and wait["id"] == event.correlation_id and wait["token"] == event.event_data["token"]
    assert wait["since"].endswith("Z") and wait["resumeAt"] is None
    assert run_view(conn, log.run_id)["run"]["waitingOn"] == [wait]


def test_bad_parameters_are_query_errors(loaded):
    for kwargs in ({"since": "yesterday"}, {"until": "soon"}, {"cursor": "zzz"}, {"cursor": "x:y"}):
        with pytest.raises(QueryError):
            list_runs(loaded, **kwargs)
    assert parse_time("1000", "since") == 1000 * 1_000_000
    assert parse_time("1970-01-01T00:00:01Z", "since") == 1_000_000_000
    assert parse_time("", "since") is None


@pytest.mark.parametrize("source", ["world", "otlp"])
def test_the_view_stitches_app_spans_in_the_event_log_trace(store, source):
    """An app span in the run's trace counts as the run's even without a run id, however the
    event-log spans came (before, only the tailer's were looked at)."""
    log = cut_run("sleep")
    records = log.records(source=source)
    run_span = next(r for r in records if r.attributes["workflow.span.kind"] == "run")
    app = app_span_in(run_span)
    commit(store, records + app)
    conn = store.connect()
    view = run_view(conn, log.run_id)
    assert {s["spanId"] for s in view["spans"]} == {r.span_id for r in records + app}
    assert [s["startTimeUnixNano"] for s in view["spans"]] == sorted(s["startTimeUnixNano"] for s in view["spans"])
    assert lookup_run(conn, run_span.trace_id) == log.run_id


def test_the_view_stitches_across_traces_by_run_id(store):
    log = cut_run("fatal")
    app = records_from(encode_spans(make_sdk_spans(1)))[0]
    for record in app:  # the app's own spans of this run (their trace is not the event log's)
        record.attributes["workflow.run.id"] = log.run_id
    commit(store, log.records() + app)
    conn = store.connect()
    ids = {s["spanId"] for s in run_view(conn, log.run_id)["spans"]}
    assert ids == {r.span_id for r in log.records() + app}
    assert run_view(conn, RUN) is None and run_view(conn, "wrun_nope") is None


def test_lookup_by_run_id_or_trace_id(loaded):
    retry = cut_run("retry")
    trace_id = retry.records()[0].trace_id
    assert lookup_run(loaded, retry.run_id) == retry.run_id
    assert lookup_run(loaded, trace_id) == lookup_run(loaded, trace_id.upper()) == retry.run_id
    assert lookup_run(loaded, "wrun_nope") is None and lookup_run(loaded, "0" * 32) is None


def test_events_page_in_event_id_order(loaded):
    log = cut_run("retry")
    seen, cursor = [], None
    while True:
        page = run_events(loaded, log.run_id, after=cursor, limit=4)
        seen += page["data"]
        if not page["hasMore"]:
            break
        cursor = page["cursor"]
    assert [e["eventId"] for e in seen] == [e.event_id for e in log.events]
    assert [e["eventType"] for e in seen] == [e.event_type for e in log.events]
    assert seen[0]["eventData"]["workflowName"] == SCENARIOS["retry"]["workflowName"]
    assert run_events(loaded, "wrun_nope", after=None, limit=10) == {"data": [], "cursor": None, "hasMore": False}


def test_trace_and_span_detail(loaded):
    records = cut_run("hook").records()
    spans = trace_spans(loaded, records[0].trace_id)
    assert {s["spanId"] for s in spans} == {r.span_id for r in records}
    hook = next(r for r in records if r.attributes["workflow.span.kind"] == "hook")
    detail = span_detail(loaded, hook.trace_id.upper(), hook.span_id.upper())
    assert detail is not None and detail["name"] == hook.name and detail["source"] == "world"
    assert [e["name"] for e in detail["events"]].count("hook_received") == 1
    assert span_detail(loaded, hook.trace_id, "0" * 16) is None and trace_spans(loaded, "0" * 32) == []


# ---- stuck runs, links to the user's tracing UI, the run's own spans -------------------------------------


def test_stuck_lists_live_runs_whose_every_wait_is_that_old(store):
    hook, sleep = cut_run("hook"), cut_run("sleep")
    created = hook.index("hook_created")
    commit(store, hook.records(upto=created), hook.event_rows(upto=created), [hook.info("running")])
    waited = sleep.index("wait_created")
    commit(store, sleep.records(upto=waited), sleep.event_rows(upto=waited), [sleep.info("running")])
    commit_run(store, cut_run("fatal"))  # finished: never stuck
    conn = store.connect()
    hook_since = ns(hook.events[created].created_at)
    sleep_since = ns(sleep.events[waited].created_at)

    def stuck(seconds: float, now: int) -> set[str]:
        return {r["runId"] for r in list_runs(conn, stuck_s=seconds, now_ns=now)["data"]}

    later = max(hook_since, sleep_since)
    assert stuck(60, later + 61 * 10**9) == {hook.run_id, sleep.run_id}
    assert hook.run_id not in stuck(60, hook_since + 59 * 10**9)
    assert stuck(0, later) == {hook.run_id, sleep.run_id}
    assert stuck(3600, later + 61 * 10**9) == set()
    assert list_runs(conn, stuck_s=60, now_ns=later + 61 * 10**9, status="completed")["data"] == []
    # the newest wait counts: a run that just moved on (a new wait began) is not stuck
    received = hook.index("hook_received")
    step = next(i for i in range(received, len(hook.events)) if hook.events[i].event_type == "step_started")
    commit(store, events=hook.event_rows(start=created + 1, upto=step), runs=[hook.info("running")])
    moved = ns(hook.events[step].created_at)
    assert hook.run_id not in stuck(60, moved + 30 * 10**9) and hook.run_id in stuck(60, moved + 61 * 10**9)


def test_a_run_whose_next_turn_never_came_is_stuck(store):
    """Cut just after a step completed, the run still running: nothing is open, so it waits on its
    workflow's next turn since then, and past the threshold it is stuck (before, it waited on nothing
    and no "stuck" list ever showed it: a turn the queue lost went unseen). The turn coming (the next
    step created) ends it; the run ending leaves nothing."""
    log = cut_run("retry")
    done = log.index("step_completed")
    commit(store, log.records(upto=done), log.event_rows(upto=done), [log.info("running")])
    conn = store.connect()
    since = ns(log.events[done].created_at)

    def stuck(seconds: float, now: int) -> set[str]:
        return {r["runId"] for r in list_runs(conn, stuck_s=seconds, now_ns=now)["data"]}

    (run,) = list_runs(conn)["data"]
    assert [(w["kind"], w["sinceNs"]) for w in run["waitingOn"]] == [("turn", since)]
    assert log.run_id in stuck(60, since + 61 * 10**9) and log.run_id not in stuck(60, since + 59 * 10**9)
    commit(store, events=log.event_rows(start=done + 1, upto=done + 1), runs=[log.info("running")])
    (run,) = list_runs(conn)["data"]
    assert [w["kind"] for w in run["waitingOn"]] == ["queued"]
    commit_run(store, log)
    (run,) = list_runs(conn)["data"]
    assert run["waitingOn"] == [] and log.run_id not in stuck(0, since + 10**12)


def test_a_run_lists_its_oldest_waits_and_how_many(store):
    log = cut_run("sleep")
    waited = log.index("wait_created")
    commit(store, log.records(upto=waited), log.event_rows(upto=waited), [log.info("running")])
    conn = store.connect()
    (run,) = list_runs(conn)["data"]
    assert run["waitingCount"] == len(run["waitingOn"]) == 1
    wait = run["waitingOn"][0]
    assert wait["kind"] == "sleep" and wait["name"] is None and wait["attempt"] is None


def test_trace_urls_put_the_ids_in_and_leave_the_rest(loaded):
    grafana = 'https://grafana.example/explore?left={"datasource":"tempo","queries":[{"query":"{trace_id}"}]}'
    check_trace_url_template(grafana)
    run = cut_run("hook")
    trace_id = run.records()[0].trace_id
    url = trace_url(grafana, trace_id, run.run_id)
    assert url == grafana.replace("{trace_id}", trace_id) and '{"datasource":"tempo"' in url
    assert trace_url("https://jaeger.example/search?tags={run_id}", None, "wrun_a b") == (
        "https://jaeger.example/search?tags=wrun_a%20b"
    )
    assert trace_url(grafana, None, run.run_id) is None and trace_url(None, trace_id, run.run_id) is None
    for bad in ("grafana.example/{trace_id}", "ftp://x/{trace_id}", "https://grafana.example/explore", "{trace_id}"):
        with pytest.raises(ValueError):
            check_trace_url_template(bad)
    page = list_runs(loaded, trace_url_template="https://t.example/trace/{trace_id}")
    assert all(r["traceUrl"] == f"https://t.example/trace/{r['traceId']}" for r in page["data"])
    assert all(r["traceUrl"] is None for r in list_runs(loaded)["data"])
    view = run_view(loaded, run.run_id, trace_url_template="https://t.example/trace/{trace_id}")
    assert view["run"]["traceUrl"] == f"https://t.example/trace/{trace_id}"


def test_the_view_leaves_out_polling_and_keeps_the_runs_own_spans(store):
    otel_cut.commit_everything(store)
    conn = store.connect()
    records = otel_cut.sdk_records()
    for scenario, expected in otel_cut.SCENARIOS.items():
        view = run_view(conn, expected["runId"])
        ids = {(s["traceId"], s["spanId"]) for s in view["spans"]}
        (start,) = [r for r in records if r.name.startswith("workflow.start") and r.run_id == expected["runId"]]
        own = {(r.trace_id, r.span_id) for r in records if r.trace_id == start.trace_id}
        assert own <= ids, scenario  # the run's trace, spans with and without its run id
        polls = {
            (r.trace_id, r.span_id)
            for r in records
            if r.run_id == expected["runId"] and not r.parent_span_id and r.name.startswith("world.runs.get")
        }
        assert polls and not polls & ids, scenario


def test_stuck_and_trace_links_over_the_api_and_the_cli(collector, tmp_path):
    service = collector(trace_url_template="https://jaeger.example/trace/{trace_id}")
    status, _, body = http("GET", f"{service.url}/api/runs?stuck=soon")
    assert status == 400 and "stuck: expected a duration" in json.loads(body)["error"]
    assert get_json(f"{service.url}/api/runs?stuck=5m") == {"data": [], "cursor": None, "hasMore": False}
    store = tmp_path / "cli" / "store.sqlite3"
    for bad in ("grafana/{trace_id}", "https://grafana.example/explore"):
        result = wft("serve", "--no-world", "--port", "0", "--store", str(store), "--trace-url-template", bad)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        (line,) = result.stderr.splitlines()  # one line, naming the flag
        assert line.startswith("wft serve: --trace-url-template: ") and "Traceback" not in result.stderr


def test_a_parent_cycle_in_hostile_spans_ends(store):
    """Spans whose parents point at each other (anyone can send OTLP) neither hang the view nor vanish."""
    hook = otel_cut.SCENARIOS["hook"]["runId"]
    (a, b) = [r for r in otel_cut.sdk_records() if r.run_id == hook and not r.parent_span_id][:2]
    b.trace_id = a.trace_id
    a.parent_span_id, b.parent_span_id = b.span_id, a.span_id
    a.name = b.name = "shop.checkout"  # not a world read: the run's
    commit(store, [a, b], runs=[otel_cut.run_log("hook").info("running")])
    conn = store.connect()
    assert {s["spanId"] for s in run_view(conn, hook)["spans"]} == {a.span_id, b.span_id}
    drawn = waterfall(conn, hook)["sdk"]
    assert sorted((i["id"], i["depth"]) for i in drawn) == sorted([(a.span_id, 0), (b.span_id, 1)])
