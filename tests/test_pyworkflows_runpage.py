"""The run page of Python workflows, in real headless Chromium: what issue 13's "done when" asks.

One real app, start to finish: the workflows of ``tests/pyworkflows/apps.py`` run on vercel-workflow's local
world (``tests/pyworkflows/run.py``, a fresh process), instrumented with ``VercelWorkflowInstrumentor`` and
exporting OTLP to a real ``wft serve`` (a subprocess) that follows the app's data dir at the same time, with
the real sentry-sdk and ``telemetry.sentry``'s ``before_send`` sending through the collector's relay to a
Sentry stand-in. Then each run's page is opened and what the page *shows* (the DOM, not the API) is checked
against what vercel-workflow's own API reported for the run: every run, its steps, retries (attempts and the
gap between them), the sleep, the hook resumed and the hook still waited on, the stream writes (the one after
the run completed shown as benign, not as an error) and the failing run's error; and no benign conflict
reached Sentry.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from . import test_ui
from .conftest import get_json, http
from .pgserver import free_port
from .sentry_standin import start_standin

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("completed", "failed", "cancelled")

browser = test_ui.browser  # Debian's Chromium through Playwright, and a page that fails the test on a JS error
page = test_ui.page


def _short(name: str) -> str:
    return name.rsplit("//", 1)[-1]


def _ms(text: str) -> float:
    """A duration the page printed (``fmtMs``: ``0.52 ms``, ``12 ms``, ``1.02 s``) in milliseconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?) (ms|s)", text.strip())
    assert match, text
    return float(match.group(1)) * (1000 if match.group(2) == "s" else 1)


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> dict[str, Any]:
    """``wft serve`` following the data dir, the instrumented app run into it, everything arrived."""
    out = tmp_path_factory.mktemp("pyrunpage")
    data, drops = out / "data", out / "sentry-drops.json"
    sentry, stop_sentry = start_standin()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTRY_", "WORKFLOW_", "OTEL_", "WFT_"))}
    log = (out / "serve.log").open("w")  # a file, not a pipe nobody reads: the service must never block on it
    serve = subprocess.Popen(
        [sys.executable, "-m", "telemetry", "serve", "--port", str(port), "--store", str(out / "store.sqlite3")]
        + ["--world", "local", "--dir", str(data), "--sentry-upstream", sentry.dsn()],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http("GET", f"{url}/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert serve.poll() is None and time.monotonic() < deadline, (out / "serve.log").read_text()[-2000:]
            time.sleep(0.05)
        done = subprocess.run(
            [sys.executable, "-m", "tests.pyworkflows.run", str(data), "--otlp", url]
            + ["--sentry-dsn", f"http://clientkey@127.0.0.1:{port}/42", "--sentry-drops", str(drops)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        for name, facts in report.items():  # the tailer has caught up with each run, its app spans are in
            deadline = time.monotonic() + 30
            while True:
                view = get_json(f"{url}/api/runs/{facts['run_id']}/waterfall")
                kinds = Counter(r["kind"] for r in view["rows"] if not r.get("open"))
                caught_up = (
                    view["run"]["status"] == facts["status"]
                    and kinds["step"] == len(facts["steps"])
                    and (kinds["run"] == 1 or facts["status"] not in TERMINAL)
                    and view["sdk"]
                )
                if caught_up:
                    break
                assert time.monotonic() < deadline, (name, view["run"], kinds)
                time.sleep(0.1)
        yield {
            "url": url,
            "report": report,
            "stderr": done.stderr,
            "sentry": sentry,
            "drops": json.loads(drops.read_text()),
        }
    finally:
        serve.terminate()
        try:
            serve.wait(20)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()
        stop_sentry()


def _open(page, app: dict[str, Any], scenario: str) -> dict[str, Any]:
    facts = app["report"][scenario]
    page.goto(f"{app['url']}/runs/{facts['run_id']}")
    page.wait_for_selector("#status .badge")
    page.wait_for_selector(".wf .row")
    return facts


def _step_rows(page) -> dict[str, list[Any]]:
    """The step rows drawn, by step name: each a locator of its row."""
    rows: dict[str, list[Any]] = {}
    labels = page.locator(".wf .row:has(.label.step)")
    for i in range(labels.count()):
        row = labels.nth(i)
        name = row.locator(".label.step").inner_text().split()[1]
        rows.setdefault(name, []).append(row)
    return rows


def _sdk_labels(page) -> list[str]:
    return page.locator(".row.sdk .label").all_inner_texts()


# ---- every run, its status, its steps and attempts -------------------------------------------------


def test_the_runs_page_lists_every_run_with_its_status(app, page):
    page.goto(app["url"] + "/")
    page.wait_for_selector("tr.run")
    assert page.locator("tr.run").count() == len(app["report"])
    for name, facts in app["report"].items():
        row = page.locator(f"tr.run[data-run='{facts['run_id']}']")
        text = row.inner_text()
        assert facts["status"] in text and _short(facts["workflow"]) in text, (name, text)


def test_each_run_page_shows_its_status_steps_and_attempts(app, page):
    for name, facts in app["report"].items():
        _open(page, app, name)
        assert page.locator("#title").inner_text() == _short(facts["workflow"]), name
        assert page.locator("#status").inner_text().strip() == facts["status"], name
        meta = page.locator("#meta").inner_text()
        assert facts["run_id"] in meta, name
        assert page.locator(".wf .label.run").count() == 1, name
        drawn = _step_rows(page)
        expected = Counter(_short(s["name"]) for s in facts["steps"].values())
        assert Counter({k: len(v) for k, v in drawn.items()}) == expected, name
        # per step: (name, attempts, attempts failed, step failed), as vercel-workflow says and as drawn
        said = Counter(
            (
                _short(s["name"]),
                s["attempt"],
                s["attempt"] if s["status"] == "failed" else s["attempt"] - 1,
                s["status"] == "failed",
            )
            for s in facts["steps"].values()
        )
        shown = Counter(
            (
                step_name,
                row.locator(".bar.seg").count(),
                row.locator(".bar.seg.error").count(),
                row.locator(".bar.step.error").count() == 1,
            )
            for step_name, rows in drawn.items()
            for row in rows
        )
        assert shown == said, name
        for rows in drawn.values():  # a retried step says how often it ran
            for row in rows:
                attempts = row.locator(".bar.seg").count()
                assert ("×" in row.locator(".label.step").inner_text()) == (attempts > 1), name
                if attempts > 1:
                    assert f"×{attempts}" in row.locator(".label.step").inner_text(), name
        if facts["status"] in TERMINAL:
            assert page.locator("#live").inner_text() == "" and page.locator(".wf .open").count() == 0, name
        # the app's own spans sit on the same page: its workflow and step executions
        labels = _sdk_labels(page)
        assert any(t.startswith(f"WORKFLOW {_short(facts['workflow'])}") for t in labels), (name, labels)
        executions = Counter(t.split()[1] for t in labels if t.startswith("STEP "))  # one per attempt
        attempts = Counter(_short(s["name"]) for s in facts["steps"].values() for _ in range(s["attempt"]))
        assert executions == attempts, (name, labels)


def test_retries_show_each_attempt_and_the_gap_between(app, page):
    """``retrying``: a RetryableError(retry_after=1) then success; ``fatal``: a ValueError then a FatalError;
    ``failing``: two ValueErrors, the step's retries exhausted."""
    for name, step_name in (("retrying", "rate_limited"), ("fatal", "doomed"), ("failing", "always_fails")):
        facts = _open(page, app, name)
        (step,) = [s for s in facts["steps"].values() if _short(s["name"]) == step_name]
        (row,) = _step_rows(page)[step_name]
        segments = row.locator(".bar.seg")
        assert segments.count() == step["attempt"] == 2, name
        titles = [segments.nth(i).get_attribute("title") for i in range(segments.count())]
        assert [t.split(" · ")[0] for t in titles] == ["attempt 1", "attempt 2"], titles
        first, second = segments.nth(0).bounding_box(), segments.nth(1).bounding_box()
        gap = row.locator(".gap")
        assert gap.count() == 1, name
        text = gap.locator("span").inner_text()
        assert text.startswith("retry after "), text
        waited = _ms(text.removeprefix("retry after "))
        assert 990 <= waited < 10_000, (name, text)  # vercel-workflow retries after 1 s (ms-precise records)
        box = gap.bounding_box()
        assert abs(box["x"] - (first["x"] + first["width"])) <= 1.5, name  # from the failed attempt's end
        assert abs(box["x"] + box["width"] - second["x"]) <= 1.5, name  # to the next attempt's start
        segments.nth(0).click()
        page.wait_for_selector("#detail .exception")
        assert "attempt 1" in page.locator("#detail .detail-name").inner_text()
        expected_error = {"retrying": "rate limited: quota", "fatal": "card declined for ord_42"}.get(
            name, "printer is broken"
        )
        assert expected_error in page.locator("#detail .exception").inner_text(), name
        if name == "failing":
            test_ui.ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(test_ui.ARTIFACTS / "run-page-python-failing.png"))


def test_the_failing_run_says_why_at_the_top(app, page):
    facts = _open(page, app, "failing")
    page.wait_for_selector("#failure .failure")
    head = page.locator("#failure .failure-head").inner_text()
    error_type, _, message = facts["error"].partition(": ")
    assert "failed" in head and error_type in head and message in head, (head, facts["error"])
    (step,) = [s for s in facts["steps"].values() if s["status"] == "failed"]
    where = page.locator("#failure .failure-where").inner_text()
    assert where == f"in step {_short(step['name'])}, attempt {step['attempt']}"
    page.click("#failure .failure-where a")
    page.wait_for_selector("#detail .exception")
    assert "printer is broken" in page.locator("#detail .exception").inner_text()
    for name in ("fatal", "retrying", "sequential"):  # a step failed or was retried, the run did not fail
        _open(page, app, name)
        assert page.locator("#failure").inner_text() == "", name


# ---- the sleep, the hooks --------------------------------------------------------------------------------


def test_the_sleep_is_a_row_and_the_step_after_it_waits_for_it(app, page):
    facts = _open(page, app, "sleeper")
    assert facts["events"].count("wait_completed") == 1
    sleep = page.locator(".row:has(.bar.sleep)")
    assert sleep.count() == 1 and sleep.locator(".label").inner_text().strip() == "sleep"
    bar = sleep.locator(".bar.sleep")
    assert _ms(bar.get_attribute("title").split(" · ")[1]) >= 1000  # sleep(1)
    (step,) = _step_rows(page)["double"]
    slept, after = bar.bounding_box(), step.locator(".bar.seg").bounding_box()
    assert after["x"] >= slept["x"] + slept["width"] - 1.5


def test_a_resumed_hook_and_one_still_waited_on(app, page):
    facts = _open(page, app, "approval")
    assert "hook_received" in facts["events"]
    hook = page.locator(".row:has(.bar.hook)")
    assert hook.count() == 1 and hook.locator(".label").inner_text().strip() == "hook approve-me"
    assert hook.locator(".bar.hook.open").count() == 0 and hook.locator(".mark").count() == 1  # its receipt
    hook.locator(".bar.hook").click()
    page.wait_for_selector("#detail .detail-name")
    assert "approve-me" in page.locator("#detail").inner_text()

    facts = _open(page, app, "waiting")
    assert facts["status"] == "running" and "hook_received" not in facts["events"]
    assert page.locator("#live").inner_text() == "live"
    waiting = page.locator(".row:has(.bar.hook.open)")
    assert waiting.count() == 1
    assert waiting.locator(".label").inner_text().split() == ["hook", "nobody-answers", "(waiting)"]
    line = page.locator("#now li.wait")
    assert line.count() == 1 and line.inner_text().startswith("hook nobody-answers")
    assert page.locator(".wf .label.run.open").count() == 1  # the run itself: open, drawn up to now


# ---- stream writes: the one after the run completed is benign --------------------------------------------


def test_stream_writes_are_shown_and_none_is_an_error(app, page):
    facts = _open(page, app, "streaming")
    ((_, stream),) = facts["streams"].items()
    assert stream["chunks"] == 3 and stream["done"]
    # the step's writer batches its three chunks as it likes (one write each, or a writeToStreamMulti)
    labels = _sdk_labels(page)
    writes = [t for t in labels if t in ("world.streams.writeToStream", "world.streams.writeToStreamMulti")]
    assert 1 <= len(writes) <= 3, labels
    assert labels.count("world.streams.closeStream") == 1
    step = labels.index("STEP stream_words")
    assert labels.index("world.streams.closeStream") > step and labels.index(writes[0]) > step  # under the step
    assert page.locator(".row.sdk .bar.sdk.error").count() == 0
    assert page.locator(".row.sdk .bar.sdk.benign").count() == 0  # written while the run ran: nothing benign


def test_the_write_after_the_run_completed_is_benign_not_an_error(app, page):
    facts = _open(page, app, "racing")
    assert facts["status"] == "completed" and facts["events"][-2:] == ["run_completed", "step_completed"]
    ((_, stream),) = facts["streams"].items()
    assert stream["chunks"] == 1  # vercel-workflow's local world stored it, after the run completed
    late = page.locator(".row.sdk:has(.label:text-is('world.streams.writeToStream')) .bar.sdk")
    assert late.count() == 1
    assert "benign" in late.get_attribute("class") and "error" not in late.get_attribute("class")
    run = page.locator(".row:has(.label.run) .bar.run").bounding_box()
    assert late.bounding_box()["x"] >= run["x"] + run["width"] - 1.5  # after the run's end
    meta = page.locator("#meta").inner_text()
    assert re.search(r"Benign conflicts\s+1\b", meta), meta
    assert re.search(r"Errors\s+0\b", meta), meta
    late.click()
    page.wait_for_selector("#detail .detail-name")
    detail = page.locator("#detail").inner_text()
    assert "world.streams.writeToStream" in detail and "benign conflict" in detail and "ERROR" not in detail
    assert page.locator("#detail .exception").count() == 0
    (straggler,) = _step_rows(page)["straggler"]
    assert straggler.locator(".bar.seg.error").count() == 0  # the write did not fail its step
    test_ui.ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(test_ui.ARTIFACTS / "run-page-python-late-write.png"))


# ---- Sentry -------------------------------------------------------------------------------------------------


def test_no_benign_conflict_reached_sentry_and_the_failures_did(app):
    """vercel-workflow logs the completion races it handled (a fan-out's replays racing to complete the run: how
    many lose is up to the queue: none to a few) as WARNINGs, ``Workflow run wrun_… was already completed``;
    sentry-sdk makes an event of each; ``before_send`` drops every one. Real failures reach Sentry."""
    report = app["report"]
    races = app["stderr"].count("was already completed")  # printed by logging's last resort, one line each
    assert app["drops"].get("racing-completion", 0) == races, (app["drops"], races)

    def about() -> list[str]:
        """What each event is about: its message, exception and tags (breadcrumbs rightly keep benign lines)."""
        return [json.dumps([e.get("logentry"), e.get("exception"), e.get("tags")]) for e in app["sentry"].events()]

    def scenarios() -> set[str]:
        return {name for t in about() for name, facts in report.items() if facts["run_id"] in t}

    deadline = time.monotonic() + 20
    while not ({"retrying", "fatal", "failing"} <= scenarios() and any("workflow run failed" in t for t in about())):
        assert time.monotonic() < deadline, ("the failures never reached Sentry", about())
        time.sleep(0.1)
    time.sleep(0.3)  # anything else the relay was still forwarding
    assert not [t for t in about() if "already completed" in t or "EntityConflictError" in t or "benign" in t]
    assert scenarios() == {"retrying", "fatal", "failing"}  # what failed, and only that
