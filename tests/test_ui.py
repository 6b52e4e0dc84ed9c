"""The built-in UI in real headless Chromium (Debian's, driven by Playwright), on real runs."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from telemetry.backends import BackendConfig

from .conftest import start_workflow, summary

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
    import json
    import urllib.request

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
    assert "retry delay" in page.locator("#detail").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "run-page.png"))

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
