"""Reconciliation (``telemetry.reconcile``) on real runs of the TS SDK harness with OpenTelemetry on
(``otel_cut``: three runs' world-local logs and every span the app exported for them): complete,
it is clean; with some of the app's spans withheld (or some of the log's events), each kind of gap
is found and named. Then the stored form (``collector.run_analysis``), the metric scan, and the
badge on the run page in real Chromium."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from functools import cache
from pathlib import Path

import pytest

from collector.metrics import Metrics
from collector.otlp import SpanRecord
from collector.run_analysis import GapScan, analyse_run
from collector.store import Store
from telemetry.reconcile import DEFAULT_GRACE_NS, GapKinds, reconcile
from telemetry.runfacts import AppSpan, LogEvent, carries_traceparent

from . import otel_cut
from .conftest import get_json, http
from .world_spans import RunLog, commit

RETRY, FATAL, HOOK = (otel_cut.SCENARIOS[k]["runId"] for k in ("retry", "fatal", "hook"))


@cache
def _log(scenario: str) -> RunLog:
    return otel_cut.run_log(scenario)


@cache
def _records() -> tuple[SpanRecord, ...]:
    return tuple(otel_cut.sdk_records())


def events(scenario: str, *, without_step: str | None = None) -> list[LogEvent]:
    return [LogEvent.of(e) for e in _log(scenario).events if without_step is None or e.correlation_id != without_step]


def app_spans(records=None) -> list[AppSpan]:
    return [
        AppSpan(r.trace_id, r.span_id, r.parent_span_id, r.name, r.start_ns, r.end_ns, r.attributes)
        for r in (_records() if records is None else records)
    ]


def check(scenario: str, spans: list[AppSpan], *, log: list[LogEvent] | None = None, now_ns: int | None = None):
    return reconcile(
        _log(scenario).run_id,
        events(scenario) if log is None else log,
        spans,
        instrumented=_instrumented(scenario),
        now_ns=now_ns,
    )


def _instrumented(scenario: str) -> bool:
    return carries_traceparent(_log(scenario).run.execution_context)


def step_spans(run_id: str, step_suffix: str) -> list[SpanRecord]:
    return [
        r
        for r in _records()
        if r.name.startswith("STEP ") and r.run_id == run_id and r.attributes["step.name"].endswith(step_suffix)
    ]


def _without(*dropped: SpanRecord) -> list[AppSpan]:
    ids = {(r.trace_id, r.span_id) for r in dropped}
    return app_spans([r for r in _records() if (r.trace_id, r.span_id) not in ids])


# ---- complete: clean ------------------------------------------------------------------------


@pytest.mark.parametrize(("scenario", "steps", "attempts"), [("retry", 2, 3), ("fatal", 2, 2), ("hook", 2, 2)])
def test_every_step_and_attempt_of_a_real_run_has_its_app_span(scenario, steps, attempts):
    assert _instrumented(scenario)  # the app ran OpenTelemetry: the run stored its traceparent
    found = check(scenario, app_spans())  # all three runs' spans: only this run's are read
    assert found.instrumented and found.clean, found.gaps
    assert (found.steps, found.log_attempts, found.app_attempts) == (steps, attempts, attempts)
    assert found.workflow_spans >= 3 and found.pending == 0
    assert found.to_json()["clean"] is True and found.to_json()["gaps"] == []


def test_a_delivery_that_started_no_attempt_is_not_an_attempt():
    """A step delivery turned away before ``step_started`` (retry time not reached, throttled, step
    already ended) has no ``step.status`` (step-handler.js sets it only after step_started): the real
    second-attempt span of the retried step, without it, stands for such a delivery."""
    second = next(r for r in step_spans(RETRY, "//flakyOnce") if r.attributes["step.status"] == "completed")
    turned_away = AppSpan(
        second.trace_id,
        "ffffffffffffffff",
        second.parent_span_id,
        second.name,
        second.start_ns - 500_000_000,
        second.start_ns - 499_000_000,
        {k: v for k, v in second.attributes.items() if k != "step.status"},
    )
    found = check("retry", [*app_spans(), turned_away])
    assert found.clean and found.app_attempts == 3


# ---- withheld: gaps ---------------------------------------------------------------------------


def test_a_withheld_attempt_span_is_an_attempt_count_gap():
    first = next(r for r in step_spans(RETRY, "//flakyOnce") if r.attributes["step.status"] == "running")
    found = check("retry", _without(first))
    (gap,) = found.gaps
    assert gap.kind == GapKinds.ATTEMPTS_DIFFER and (gap.log_attempts, gap.app_attempts) == (2, 1)
    assert gap.step_id == first.attributes["step.id"] and gap.step_name.endswith("//flakyOnce")
    assert gap.message.startswith(f"step flakyOnce ({gap.step_id}): 2 attempts in the event log, 1 in the app's")
    assert found.app_attempts == 2 and found.log_attempts == 3


def test_a_step_with_no_app_span_at_all_is_named():
    (fatal_step,) = step_spans(FATAL, "//alwaysFatal")
    found = check("fatal", _without(fatal_step))
    (gap,) = found.gaps
    assert gap.kind == GapKinds.STEP_NOT_EXPORTED and (gap.log_attempts, gap.app_attempts) == (1, 0)
    assert "never exported, or exported elsewhere" in gap.message and "alwaysFatal" in gap.message
    assert gap.to_json()["stepId"] == fatal_step.attributes["step.id"]


def test_app_spans_of_a_step_the_log_does_not_have_are_named():
    (approval,) = step_spans(HOOK, "//processApproval")
    step_id = approval.attributes["step.id"]
    found = check("hook", app_spans(), log=events("hook", without_step=step_id))
    (gap,) = found.gaps
    assert gap.kind == GapKinds.STEP_NOT_IN_LOG and gap.step_id == step_id
    assert gap.span_ids == (approval.span_id,) and gap.step_name.endswith("//processApproval")
    assert "not in the run's event log" in gap.message


def test_a_run_whose_app_spans_all_went_elsewhere_has_every_step_missing():
    """The run stored a traceparent (the app ran OpenTelemetry) but none of its spans arrived here."""
    found = check("retry", [])
    assert found.instrumented
    kinds = sorted(g.kind for g in found.gaps)
    assert kinds == [GapKinds.RUN_NOT_EXPORTED, GapKinds.STEP_NOT_EXPORTED, GapKinds.STEP_NOT_EXPORTED]
    workflow_only = _without(*[r for r in _records() if r.name.startswith("WORKFLOW ") and r.run_id == RETRY])
    (gap,) = check("retry", workflow_only).gaps
    assert gap.kind == GapKinds.RUN_NOT_EXPORTED and gap.step_id is None


def test_what_ended_within_the_grace_period_is_pending_not_a_gap():
    """Attempts are counted, not matched by time (app and world clocks may differ), so a step's gap
    is judged once all its attempts are older than the grace period."""
    first = next(r for r in step_spans(RETRY, "//flakyOnce") if r.attributes["step.status"] == "running")
    step_id = first.attributes["step.id"]
    completed = next(
        e.at_ns for e in events("retry") if e.event_type == "step_completed" and e.correlation_id == step_id
    )
    soon = check("retry", _without(first), now_ns=completed + 1_000_000_000)
    assert soon.clean and soon.pending == 1  # its attempts ended < 30 s ago: spans may be on their way
    later = check("retry", _without(first), now_ns=completed + DEFAULT_GRACE_NS)
    assert [g.kind for g in later.gaps] == [GapKinds.ATTEMPTS_DIFFER] and later.pending == 0
    assert check("retry", app_spans(), now_ns=completed).pending == 0  # nothing missing: nothing pending


def test_runs_of_an_app_without_opentelemetry_are_not_instrumented_not_gaps(harness_out):
    """The harness's own outputs were made without OpenTelemetry: no traceparent, no app span."""
    results = json.loads((harness_out / "local-runs-summary.json").read_text())["results"]
    attempts = 0
    for result in results.values():
        log = RunLog(harness_out / "local-data", result["runId"])
        assert not carries_traceparent(log.run.execution_context)
        found = reconcile(log.run_id, [LogEvent.of(e) for e in log.events], [], instrumented=False)
        assert not found.instrumented and found.clean
        attempts += found.log_attempts
    assert len(results) == 11 and attempts >= 28  # every step ran at least once (28 steps, one retried)


# ---- stored: the API field and the metric -----------------------------------------------------


def _store(tmp_path: Path, *withheld: SpanRecord) -> Store:
    store = Store(tmp_path / "store.sqlite3")
    for scenario in otel_cut.SCENARIOS:
        log = _log(scenario)
        commit(store, log.records(), log.event_rows(), [log.info()])
    ids = {(r.trace_id, r.span_id) for r in withheld}
    commit(store, [r for r in otel_cut.sdk_records() if (r.trace_id, r.span_id) not in ids])
    return store


def test_a_stored_run_is_reconciled_as_the_library_does(tmp_path):
    first = next(r for r in step_spans(RETRY, "//flakyOnce") if r.attributes["step.status"] == "running")
    store = _store(tmp_path, first)
    conn = store.reader()
    for scenario, run_id in ((k, v["runId"]) for k, v in otel_cut.SCENARIOS.items()):
        stored = analyse_run(conn, run_id)["reconciliation"]
        expected = check(scenario, _without(first), now_ns=time.time_ns()).to_json()
        assert stored == expected, scenario
    assert analyse_run(conn, RETRY)["reconciliation"]["gaps"][0]["kind"] == GapKinds.ATTEMPTS_DIFFER
    assert analyse_run(conn, "wrun_unknown") is None


def test_the_metric_counts_finished_runs_with_gaps_and_follows_late_spans(tmp_path):
    first = next(r for r in step_spans(RETRY, "//flakyOnce") if r.attributes["step.status"] == "running")
    store = _store(tmp_path, first)
    metrics = Metrics()
    scan = GapScan(metrics, grace_ns=0, batch=2)  # two runs a scrape: the third waits for the next
    scan.scan(store.reader())
    assert metrics.reconcile_runs_checked == 2
    scan.scan(store.reader())
    assert metrics.reconcile_runs_checked == 3 and scan.with_gaps == {RETRY}
    assert metrics.reconcile_runs_with_gaps == 1 and metrics.reconcile_gap_runs == 1
    text = metrics.render()
    assert "wft_reconcile_runs_with_gaps 1.0\n" in text and "wft_reconcile_gap_runs_total 1.0\n" in text
    scan.scan(store.reader())  # nothing changed: nothing read again
    assert metrics.reconcile_runs_checked == 3
    time.sleep(0.01)
    commit(store, [first])  # the late span arrives: the run is read again and leaves the gauge
    scan.scan(store.reader())
    assert metrics.reconcile_runs_checked == 4 and metrics.reconcile_runs_with_gaps == 0
    assert metrics.reconcile_gap_runs == 1  # a counter: it found one, once


def test_the_scan_waits_for_runs_to_go_quiet(tmp_path):
    store = _store(tmp_path)
    metrics = Metrics()
    GapScan(metrics).scan(store.reader())  # default grace: just written, not judged yet
    assert metrics.reconcile_runs_checked == 0


def test_the_scan_never_fails_a_scrape(tmp_path, caplog):
    store = _store(tmp_path)
    read_only = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    read_only.row_factory = sqlite3.Row
    metrics = Metrics()
    GapScan(metrics, grace_ns=0).scan(read_only)  # its index cannot be made: it reads without it
    assert metrics.reconcile_runs_checked == 3
    GapScan(metrics, grace_ns=0).scan(sqlite3.connect(tmp_path / "not-a-store.sqlite3"))
    assert "reconciliation metrics not updated" in caplog.text and metrics.reconcile_runs_checked == 3


# ---- the run page: badge and bar ---------------------------------------------------------------


def test_the_run_page_shows_the_gap_badge_and_the_time_bar(collector, tmp_path):
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    first = next(r for r in step_spans(RETRY, "//flakyOnce") if r.attributes["step.status"] == "running")
    from telemetry.backends import BackendConfig

    service = collector(world=BackendConfig("local", data_dir=str(otel_cut.OTEL_CUT)), tail_interval=0.1)
    for document in json.loads((otel_cut.OTEL_CUT / "spans.json").read_text()):  # withhold one STEP span
        for resource in document["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                scope["spans"] = [s for s in scope["spans"] if s["spanId"].lower() != first.span_id]
        body = json.dumps(document).encode()
        assert http("POST", f"{service.url}/v1/traces", body, {"Content-Type": "application/json"})[0] == 200
    deadline = time.monotonic() + 20
    while get_json(f"{service.url}/api/runs/{RETRY}")["run"]["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    view = get_json(f"{service.url}/api/runs/{RETRY}")
    assert [g["kind"] for g in view["reconciliation"]["gaps"]] == [GapKinds.ATTEMPTS_DIFFER]
    assert view["timeBreakdown"]["appSpans"] and get_json(f"{service.url}/api/runs/{HOOK}")["reconciliation"]["clean"]
    assert http("GET", f"{service.url}/api/runs/{RETRY}/analysis?grace=soon")[0] == 400
    assert http("GET", f"{service.url}/api/runs/wrun_nothing/analysis")[0] == 404
    assert "wft_reconcile_runs_with_gaps" in http("GET", f"{service.url}/metrics")[2].decode()

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{service.url}/runs/{RETRY}")
            page.wait_for_selector("#analysis .tbar .tseg")
            assert page.locator("#analysis .badge.recon-gaps").inner_text() == "1 gap in app spans"
            page.click("#analysis details.gaps summary")
            assert "step flakyOnce" in page.locator("#analysis details.gaps li").inner_text()
            parts = {el.get_attribute("data-part") for el in page.locator("#analysis .tseg").all()}
            assert {"backoff", "world", "queued"} <= parts
            widths = page.evaluate(
                "[...document.querySelectorAll('#analysis .tseg')].reduce((a, e) => a + parseFloat(e.style.width), 0)"
            )
            assert abs(widths - 100) < 0.01  # the parts fill the bar: they add up to the run's duration
            artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "run-page-time-and-gaps.png"))
            page.goto(f"{service.url}/runs/{HOOK}")
            page.wait_for_selector("#analysis .badge.recon-ok")
            assert "hook" in {el.get_attribute("data-part") for el in page.locator("#analysis .tseg").all()}
            assert errors == []
        finally:
            browser.close()
