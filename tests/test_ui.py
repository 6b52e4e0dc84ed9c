"""The built-in UI in real headless Chromium (Debian's, driven by Playwright), on real runs: the
harness's final and mid-run world-local data, and its spans with OpenTelemetry on (``otel_cut``).
Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from telemetry.backends import BackendConfig

from . import otel_cut
from .conftest import get_json, http, start_workflow, summary

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], errors


def _loaded(service, harness_out):
    results = summary(harness_out, "local")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{service.url}/api/runs?limit=100") as r:
            if len(json.loads(r.read())["data"]) >= len(results):
                return results
        time.sleep(0.1)
    raise AssertionError("the tailer did not load the harness runs")


def test_runs_page_lists_every_scenario(collector, harness_out, page):
    service = collector(world=BackendConfig("local", data_dir=str(harness_out / "local-data")), tail_interval=0.1)
    results = _loaded(service, harness_out)
    page.goto(service.url + "/")
    page.wait_for_selector("tr.run")
    rows = page.locator("tr.run")
    assert rows.count() == len(results)
    text = page.locator("#runs").inner_text()
    for result in results.values():
        assert result["runId"] in text
        assert result["workflowName"].rsplit("//", 1)[-1] in text
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "runs-page.png"))
    page.select_option("#status", "failed")
    page.wait_for_function("document.querySelectorAll('tr.run').length === 2")
    page.select_option("#status", "")
    page.fill("#q", results["fatal"]["runId"])
    page.press("#q", "Enter")
    page.wait_for_url(f"**/runs/{results['fatal']['runId']}")


def test_run_pages_show_failures_retries_sleeps_and_hooks(collector, harness_out, page):
    service = collector(world=BackendConfig("local", data_dir=str(harness_out / "local-data")), tail_interval=0.1)
    results = _loaded(service, harness_out)
    fatal = results["fatal"]
    page.goto(f"{service.url}/runs/{fatal['runId']}")
    page.wait_for_selector(".bar.step.error")
    assert "failed" in page.locator("#status").inner_text()
    label = page.locator(".row:has(.bar.step.error) .label").inner_text()
    assert "alwaysFatal" in label
    page.click(".row:has(.bar.step.error) .label")  # the step itself (its attempt covers its bar)
    page.wait_for_selector("#detail .exception")
    assert "step alwaysFatal" in page.locator("#detail .detail-name").inner_text()
    assert "fatal: boom" in page.locator("#detail .exception").inner_text()
    assert "FatalError" in page.locator("#detail").inner_text()

    page.goto(f"{service.url}/runs/{results['retry']['runId']}")
    page.wait_for_selector(".bar.seg")
    flaky = page.locator(".row", has_text="flakyOnce")
    assert flaky.locator(".bar.seg").count() == 2 and flaky.locator(".bar.seg.error").count() == 1
    assert "×2" in flaky.inner_text()
    flaky.locator(".bar.seg.error").click()
    page.wait_for_selector("#detail .exception")
    assert "retry delay" not in page.locator("#detail").inner_text()  # the failed attempt: final as it ended
    flaky.locator(".bar.seg:not(.error)").click()  # the retry: how long it came after the failure
    page.wait_for_function("document.querySelector('#detail').innerText.includes('retry delay')")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "run-page-retry.png"))

    page.goto(f"{service.url}/runs/{results['sleep']['runId']}")
    page.wait_for_selector(".bar.sleep")
    assert page.locator(".row:has(.bar.sleep) .label").inner_text().strip() == "sleep"

    hook = results["hook"]
    page.goto(f"{service.url}/runs/{hook['runId']}")
    page.wait_for_selector(".bar.hook")
    assert hook["token"] in page.locator(".row:has(.bar.hook) .label").inner_text()
    assert page.locator(".bar.hook ~ .mark").count() == 1  # the receipt
    page.click(".bar.hook")
    page.wait_for_selector("#detail pre")
    assert "alice" in page.locator("#detail").inner_text()

    page.click("#events-box summary")
    page.wait_for_selector("#events tr")
    assert "hook_received" in page.locator("#events").inner_text()

    # deep link by trace id opens the run
    trace_id = page.locator("#meta").inner_text().split("Trace id")[1].split()[0]
    page.goto(f"{service.url}/traces/{trace_id}")
    page.wait_for_url(f"**/runs/{hook['runId']}")


def test_a_running_run_turns_completed_without_reload(collector, live_local_app, page):
    service = collector(world=BackendConfig("local", data_dir=live_local_app["DATA_DIR"]), tail_interval=0.1)
    run_id = start_workflow(live_local_app["URL"], "sleep", [])
    page.goto(f"{service.url}/runs/{run_id}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "No run" in page.locator("#error").inner_text():
        time.sleep(0.2)
        page.reload()  # before the tailer has seen it at all
    page.wait_for_selector("#status .badge")
    page.evaluate("window.__sameDocument = true")
    assert page.locator("#status").inner_text().strip() in ("running", "pending")
    page.wait_for_function("document.querySelector('#status').innerText.trim() === 'completed'", timeout=20000)
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert page.locator(".bar.sleep").count() == 1


def _midrun(collector, harness_out):
    midrun = harness_out / "local-data-midrun"
    service = collector(world=BackendConfig("local", data_dir=str(midrun)), tail_interval=0.1)
    return service, _loaded(service, harness_out), midrun


def test_live_runs_show_what_they_wait_on_and_the_step_being_retried(collector, harness_out, page):
    """The mid-run snapshot: one run waits on a hook, one on a sleep, one is retrying a step, one is
    in a step's attempt."""
    service, results, midrun = _midrun(collector, harness_out)
    # the hook run's own hook (the webhook run's may be pending too, depending on the snapshot's timing)
    (hook,) = [
        h
        for h in (json.loads(p.read_text()) for p in (midrun / "hooks").glob("hook_*.json"))
        if h["runId"] == results["hook"]["runId"]
    ]
    page.goto(service.url + "/")
    page.evaluate("localStorage.setItem('wft-stuck', '1s')")  # the age past which a wait is highlighted
    page.reload()
    page.wait_for_selector("tr.run")
    hook_row = page.locator(f"tr.run[data-run='{results['hook']['runId']}']")
    assert "running" in hook_row.inner_text()
    hook_wait = hook_row.locator("td.waiting .wait")
    assert hook_wait.inner_text().startswith(f"hook {hook['token']} ")
    assert re.search(r" \d+ [smhd]", hook_wait.locator(".age").inner_text())  # how long, in words
    assert "stuck" in hook_wait.get_attribute("class")
    sleep_row = page.locator(f"tr.run[data-run='{results['sleep']['runId']}']")
    assert sleep_row.locator("td.waiting").inner_text().startswith("sleep until ")
    retry_row = page.locator(f"tr.run[data-run='{results['retry']['runId']}']")
    assert retry_row.locator("td.waiting").inner_text().startswith("retry 2 of flakyOnce ")
    step_row = page.locator(f"tr.run[data-run='{results['eagerCloseViaStep']['runId']}']")
    assert step_row.locator("td.waiting").inner_text().startswith("step slowAfterClose running ")
    done_row = page.locator(f"tr.run[data-run='{results['sequential']['runId']}']")
    assert done_row.locator("td.waiting").inner_text().strip() == ""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "runs-page-midrun.png"))

    # the live runs that wait on something (one between a step's end and its workflow's next turn waits
    # on nothing the log records: whether the snapshot caught one so, e.g. the webhook run, is timing)
    waiting = set(
        page.eval_on_selector_all(
            "tr.run", "rows => rows.filter((r) => r.querySelector('.wait')).map((r) => r.dataset.run)"
        )
    )

    # stuck: only the live runs all of whose waits are that old
    page.fill("#stuck", "1s")
    page.press("#stuck", "Enter")
    page.wait_for_function("[...document.querySelectorAll('tr.run')].every((r) => r.querySelector('.wait'))")
    stuck = set(page.eval_on_selector_all("tr.run", "rows => rows.map((r) => r.dataset.run)"))
    # every run going at the snapshot and waiting on something waits on something older than 1 s by now
    # (which ones besides these four, e.g. the webhook run, depends on when the harness took the snapshot)
    records = [json.loads(p.read_text()) for p in (midrun / "runs").glob("*.json")]
    going = {r["runId"] for r in records if r["status"] == "running"}
    assert {results[k]["runId"] for k in ("hook", "sleep", "retry", "eagerCloseViaStep")} <= going & waiting
    assert waiting <= going and stuck == going & waiting
    assert "stuck=1s" in page.url
    page.fill("#stuck", "1000d")
    page.press("#stuck", "Enter")
    page.wait_for_selector("td.empty")
    assert "No runs match these filters." in page.locator("#runs").inner_text()

    page.goto(f"{service.url}/runs/{results['hook']['runId']}?stuck=1s")
    page.wait_for_selector(".bar.hook.open")
    assert hook["token"] in page.locator(".row:has(.bar.hook.open) .label").inner_text()
    now = page.locator("#now")
    assert now.inner_text().startswith("Now ") and "running for" in now.inner_text()
    line = now.locator("li.wait")
    assert line.count() == 1 and f"hook {hook['token']}" in line.inner_text() and "since" in line.inner_text()
    assert "stuck" in line.get_attribute("class")
    _now_line_at_now(page)
    page.screenshot(path=str(ARTIFACTS / "run-page-waiting.png"))
    page.click(".row:has(.bar.step) .label")  # real spans stay clickable beside the open rows
    page.wait_for_selector("#detail .detail-name")
    page.goto(f"{service.url}/runs/{results['hook']['runId']}?stuck=1000d")
    page.wait_for_selector("#now li.wait")
    assert "stuck" not in page.locator("#now li.wait").get_attribute("class")  # under the threshold: plain

    page.goto(f"{service.url}/runs/{results['retry']['runId']}")
    page.wait_for_selector(".row:has(.label.step.open)")
    retrying = page.locator(".row:has(.label.step.open)")
    assert "flakyOnce" in retrying.inner_text() and "(retrying)" in retrying.inner_text()
    assert retrying.locator(".bar.seg.error").count() == 1
    assert retrying.locator(".gap.pending").inner_text() == "retry pending"
    assert "retry 2 of flakyOnce" in page.locator("#now").inner_text()
    retrying.locator(".label").click()  # opens the latest attempt, with its error
    page.wait_for_selector("#detail .exception")
    assert "attempt 1" in page.locator("#detail .detail-name").inner_text()

    page.goto(f"{service.url}/runs/{results['eagerCloseViaStep']['runId']}")
    page.wait_for_selector(".bar.seg.open")
    assert "step slowAfterClose running" in page.locator("#now").inner_text()
    assert "(running)" in page.locator(".row:has(.bar.seg.open) .label").inner_text()


def _now_line_at_now(page) -> None:
    """The now line sits where now is on the time axis (a live run's axis ends now)."""
    data = page.evaluate("data")
    lane = page.locator(".row .lane").first.bounding_box()
    line = page.locator(".now-line").bounding_box()
    span = max([r["s"] + r["d"] for r in data["rows"]] + [data["now"]])
    assert abs(line["x"] - (lane["x"] + lane["width"] * data["now"] / span)) <= 2
    assert line["height"] >= page.locator("#wf-inner").bounding_box()["height"] - 1


def test_a_failed_run_says_why_at_the_top_without_a_click(collector, harness_out, page):
    """Failed runs of the mid-run snapshot: the error, the failing step and attempt, the stack folded."""
    service, results, _ = _midrun(collector, harness_out)
    fatal = results["fatal"]
    page.goto(f"{service.url}/runs/{fatal['runId']}")
    page.wait_for_selector("#failure .failure")
    head = page.locator("#failure .failure-head").inner_text()
    assert "failed" in head and "FatalError" in head and "USER_ERROR" in head and fatal["error"]["message"] in head
    assert page.locator("#failure .failure-where").inner_text() == "in step alwaysFatal, attempt 1"
    stack = page.locator("#failure details.stack")
    assert stack.get_attribute("open") is None and not stack.locator("pre").is_visible()  # folded
    stack.locator("summary").click()
    assert stack.locator("pre").inner_text().startswith("FatalError: fatal: boom\n    at alwaysFatal")
    assert page.locator("#detail .detail-name").count() == 0  # nothing needed clicking so far
    page.click("#failure .failure-where a")  # the step opens in the detail pane
    page.wait_for_selector("#detail .exception")
    assert "step alwaysFatal" in page.locator("#detail .detail-name").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "run-page-failed.png"))

    inline = results["eagerCloseInline"]
    page.goto(f"{service.url}/runs/{inline['runId']}")
    page.wait_for_selector("#failure .failure")
    assert inline["error"]["message"] in page.locator("#failure .failure-head").inner_text()
    assert page.locator("#failure .failure-where").inner_text() == "in the workflow function itself (no step failed)"
    page.goto(f"{service.url}/runs/{results['sequential']['runId']}")
    page.wait_for_selector(".bar.run")
    assert page.locator("#failure").inner_text() == "" and page.locator("#now").inner_text() == ""


def test_the_sdks_spans_sit_on_the_runs_time_axis(collector, page):
    """Real SDK spans (``otel_cut``: the harness with OpenTelemetry on) next to the event log the
    collector follows: each SDK bar is where its span's real time is; polling is not drawn; a retry's
    gap says its backoff; the axis labels hold on one line; the trace opens in the user's Tempo."""
    template = "https://grafana.example/explore?left={%22queries%22:[{%22query%22:%22{trace_id}%22}]}"
    service = collector(
        world=BackendConfig("local", data_dir=str(otel_cut.OTEL_CUT)), tail_interval=0.1, trace_url_template=template
    )
    for body in otel_cut.request_bodies():  # as the app's OTLP/JSON exporter sent them
        assert http("POST", f"{service.url}/v1/traces", body, {"Content-Type": "application/json"})[0] == 200
    fatal = otel_cut.SCENARIOS["fatal"]["runId"]
    deadline = time.monotonic() + 20
    while True:
        view = get_json(f"{service.url}/api/runs/{fatal}/waterfall")
        if view["run"]["status"] == "failed" and view["sdk"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    page.goto(f"{service.url}/runs/{fatal}")
    page.wait_for_selector(".bar.sdk")
    data = page.evaluate("data")
    span = max(x["s"] + x["d"] for x in data["rows"] + data["sdk"])
    lane = page.locator(".row.sdk .lane").first.bounding_box()
    bars = page.locator(".bar.sdk")
    assert bars.count() == len(data["sdk"]) and data["sdk"]
    for i in range(bars.count()):
        box, item = bars.nth(i).bounding_box(), data["sdk"][i]
        assert abs(box["x"] - (lane["x"] + lane["width"] * item["s"] / span)) <= 1.5, item["name"]
    assert not any(x["name"] == "world.runs.get" and x["depth"] == 0 for x in data["sdk"])  # polling left out
    labels = page.locator(".row.sdk .label").all_inner_texts()
    assert labels[0] == "workflow.start fatalWorkflow" and "STEP alwaysFatal" in labels
    # the SDK's STEP span holds the event log's attempt of that step: one axis for both
    step = page.locator(".row.sdk:has(.label:text-is('STEP alwaysFatal')) .bar.sdk").bounding_box()
    attempt = page.locator(".row:has(.label.step:text('step alwaysFatal')) .bar.seg").bounding_box()
    assert step["x"] - 1 <= attempt["x"] and attempt["x"] + attempt["width"] <= step["x"] + step["width"] + 1
    _axis_labels_hold_one_line(page)
    link = page.locator("#trace-link")
    trace_id = data["run"]["traceId"]
    assert link.is_visible() and link.get_attribute("href") == template.replace("{trace_id}", trace_id)
    assert get_json(f"{service.url}/api/runs/{fatal}")["run"]["traceUrl"] == link.get_attribute("href")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "run-page-sdk.png"))

    page.goto(f"{service.url}/runs/{otel_cut.SCENARIOS['retry']['runId']}")
    page.wait_for_selector(".gap span")
    gap = page.locator(".gap span").inner_text()
    failed = next(g for r in page.evaluate("data")["rows"] for g in r["segments"] if g["status"] == 2)
    assert re.fullmatch(r"retry after \d+(\.\d+)? m?s", gap), gap
    gap_box = page.locator(".gap").bounding_box()
    seg_box = page.locator(".bar.seg.error").bounding_box()
    assert abs(gap_box["x"] - (seg_box["x"] + seg_box["width"])) <= 1.5 and failed["n"] == 1
    page.screenshot(path=str(ARTIFACTS / "run-page.png"))
    page.uncheck(".sdk-check")  # the SDK's spans fold away, and stay folded
    page.wait_for_function("!document.querySelector('.bar.sdk')")
    page.reload()
    page.wait_for_selector(".row.sep")
    assert page.locator(".bar.sdk").count() == 0
    page.check(".sdk-check")
    page.wait_for_selector(".bar.sdk")


def _axis_labels_hold_one_line(page) -> None:
    axis = page.locator("#axis").bounding_box()
    ticks = page.locator("#axis span")
    assert ticks.count() >= 6
    for i in range(ticks.count()):
        box = ticks.nth(i).bounding_box()
        assert box["height"] <= 16, ticks.nth(i).inner_text()  # one line of 11px text
        assert axis["x"] - 0.5 <= box["x"] and box["x"] + box["width"] <= axis["x"] + axis["width"] + 0.5


def test_a_20k_span_run_page_draws_its_first_rows_the_axis_and_scrolls_to_its_last_step(
    collector, harness_out, page, tmp_path
):
    """A 10,000-step run grown from a real harness run (``bench.synth.long_run``: 20,001 spans)
    draws like a small one: the run row and its first steps, the time axis, and scrolling the
    waterfall to its end shows the last step (only the rows in view are in the DOM). How fast is
    the bench's question (section 5), not this test's."""
    from bench.synth import long_run

    steps = 10_000
    (run_id,) = long_run(harness_out / "local-data", tmp_path / "long", steps)
    service = collector(world=BackendConfig("local", data_dir=str(tmp_path / "long")), tail_interval=0.1)
    deadline = time.monotonic() + 240
    while True:
        runs = get_json(f"{service.url}/api/runs?limit=5")["data"]
        if any(r["runId"] == run_id and r["status"] == "completed" and r["steps"] == steps for r in runs):
            break
        assert time.monotonic() < deadline, "the tailer did not load the long run"
        time.sleep(0.5)
    page.goto(f"{service.url}/runs/{run_id}")
    page.wait_for_selector(".row .bar.run", timeout=60_000)
    labels = page.locator(".row .label")
    assert labels.first.inner_text().startswith("run ")
    assert labels.nth(1).inner_text().startswith("step ") and page.locator(".row .bar.step").count() >= 10
    drawn = page.locator(".row").count()
    assert drawn < 200, drawn  # the rows in view (and a margin), not 10,001 of them
    _axis_labels_hold_one_line(page)
    assert page.locator("#axis span").first.inner_text() == "0"
    assert page.locator("#axis span.last").inner_text() == page.evaluate("fmtMs(span)")
    rows = page.evaluate("data.rows")
    assert len(rows) == steps + 1 and sum(r["kind"] == "step" for r in rows) == steps
    last = max(range(len(rows)), key=lambda i: (rows[i]["kind"] == "step", rows[i]["s"]))
    assert page.locator(f'.row[data-row="{last}"]').count() == 0  # not drawn before it is scrolled to
    page.locator("#wf").evaluate("wf => { wf.scrollTop = wf.scrollHeight; }")
    row = page.locator(f'.row[data-row="{last}"]')
    row.wait_for()
    assert row.locator(".bar.step").count() == 1 and row.locator(".label").inner_text().startswith("step ")
    assert row.is_visible()
    assert page.locator(".row").count() < 200
