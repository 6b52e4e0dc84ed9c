"""Listing runs: ``wft runs`` against the SDK's own ``workflow inspect runs`` (pages, cursors,
``hasMore``) on the real harness's world-local data and world-postgres dump; ``--workflow`` by
function, file or full id, the same in the CLI and the collector's ``/api/runs?workflow=``; whole
milliseconds in the API; runs the collector's tailer could not read, named in the API and marked on
the pages (real headless Chromium); ``wft trace-id`` reading a run's stored traceparent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from ulid import ULID

from telemetry.backends import BackendConfig

from .conftest import get_json, http, summary, wft

FIXTURES = Path(__file__).parent / "fixtures"


def sdk_runs(app_dir: Path, env: dict[str, str], *args: str) -> dict:
    """``workflow inspect runs --json`` of the real SDK CLI (its banner stripped)."""
    result = subprocess.run(
        [str(app_dir / "node_modules/.bin/workflow"), "inspect", "runs", "--json", *args],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout[result.stdout.index("{") :])


def our_runs(world: list[str], *args: str) -> dict:
    result = wft("runs", *world, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(params=["local", "postgres"])
def both_worlds(request, harness_out):
    """(our world flags, the SDK CLI's environment) for the same harness data."""
    if request.param == "local":
        data = str(harness_out / "local-data")
        return ["--world", "local", "--dir", data], {"WORKFLOW_TARGET_WORLD": "local", "WORKFLOW_LOCAL_DATA_DIR": data}
    url = request.getfixturevalue("harness_pg_url")
    return ["--world", "postgres", "--url", url], {
        "WORKFLOW_TARGET_WORLD": "@workflow/world-postgres",
        "WORKFLOW_POSTGRES_URL": url,
    }


def test_json_pages_are_the_sdk_cli_pages(both_worlds, harness_app_dir):
    """Page by page with --limit 4 and each page's cursor: the very JSON the SDK CLI prints,
    ``cursor`` and ``hasMore`` included (the last page keeps its last run's cursor, as the SDK's)."""
    ours_flags, sdk_env = both_worlds
    cursor, pages = None, 0
    seen: list[str] = []
    while True:
        more = ["--cursor", cursor] if cursor else []
        expected = sdk_runs(harness_app_dir, sdk_env, "--limit", "4", *more)
        got = our_runs(ours_flags, "--limit", "4", *more)
        assert got == expected, pages
        pages += 1
        seen += [r["runId"] for r in got["data"]]
        if not got["hasMore"]:
            break
        cursor = got["cursor"]
    assert pages == 3 and len(seen) == len(set(seen)) == 11
    assert got["cursor"] == expected["cursor"] is not None  # the last page's cursor, too
    after_last = our_runs(ours_flags, "--limit", "4", "--cursor", got["cursor"])
    assert after_last == sdk_runs(harness_app_dir, sdk_env, "--limit", "4", "--cursor", got["cursor"])
    assert after_last == {"data": [], "cursor": None, "hasMore": False}


def test_workflow_by_function_file_or_full_id(both_worlds, harness_app_dir, harness_out):
    ours_flags, sdk_env = both_worlds
    sleep = summary(harness_out, "local")["sleep"]["workflowName"]  # the same name in both worlds
    by_full = sdk_runs(harness_app_dir, sdk_env, "--workflowName", sleep)  # the SDK takes the full id only
    assert len(by_full["data"]) == 1
    assert sdk_runs(harness_app_dir, sdk_env, "--workflowName", "sleepWorkflow")["data"] == []
    for pattern in (sleep, "sleepWorkflow"):
        assert our_runs(ours_flags, "--workflow", pattern) == by_full, pattern
    everything = sdk_runs(harness_app_dir, sdk_env)
    for file in ("workflows/demo", "./workflows/demo", "./workflows/demo.ts", "demo"):  # every harness workflow
        assert our_runs(ours_flags, "--workflow", file) == everything, file
    for nothing in ("Workflow", "sleep", "workflows/dem", "emo", "%", "sleep_orkflow"):
        assert our_runs(ours_flags, "--workflow", nothing) == {"data": [], "cursor": None, "hasMore": False}


def test_workflow_filter_pages_on_a_short_name(both_worlds, harness_app_dir):
    """A file filter the world cannot apply itself still pages exactly as the SDK's unfiltered
    listing does (every harness workflow is in one file): same pages, same cursors."""
    ours_flags, sdk_env = both_worlds
    cursor = None
    while True:
        more = ["--cursor", cursor] if cursor else []
        got = our_runs(ours_flags, "--limit", "5", "--workflow", "workflows/demo", *more)
        assert got == sdk_runs(harness_app_dir, sdk_env, "--limit", "5", *more)
        if not got["hasMore"]:
            break
        cursor = got["cursor"]


def test_table_says_how_to_page(harness_out):
    result = wft("runs", "--dir", str(harness_out / "local-data"), "--limit", "3")
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 4 and "wft runs --cursor '" in result.stderr


# ---- the collector: the same --workflow rule, whole milliseconds --------------------------------


def _loaded(service, expected: int) -> None:
    deadline = time.monotonic() + 30
    while len(get_json(f"{service.url}/api/runs?limit=100")["data"]) < expected:
        assert time.monotonic() < deadline, "the tailer did not load the harness runs"
        time.sleep(0.1)


def test_api_workflow_filter_is_the_cli_rule(collector, harness_out):
    data = str(harness_out / "local-data")
    service = collector(world=BackendConfig("local", data_dir=data), tail_interval=0.1)
    _loaded(service, 11)
    full = summary(harness_out, "local")["retry"]["workflowName"]
    for pattern in (full, "retryWorkflow", "workflows/demo", "./workflows/demo.ts", "demo", "Workflow", "emo"):
        query = urllib.parse.urlencode({"workflow": pattern, "limit": 100})
        api = sorted(r["runId"] for r in get_json(f"{service.url}/api/runs?{query}")["data"])
        cli = sorted(r["runId"] for r in our_runs(["--dir", data], "--workflow", pattern, "--limit", "100")["data"])
        assert api == cli, pattern
    assert len(get_json(f"{service.url}/api/runs?workflow=demo&limit=100")["data"]) == 11


def test_api_durations_are_whole_milliseconds(collector, harness_out):
    service = collector(world=BackendConfig("local", data_dir=str(harness_out / "local-data")), tail_interval=0.1)
    _loaded(service, 11)
    runs = get_json(f"{service.url}/api/runs?limit=100")["data"]
    assert all(isinstance(r["durationMs"], int) for r in runs if r["status"] in ("completed", "failed"))
    view = get_json(f"{service.url}/api/runs/{runs[0]['runId']}")
    assert isinstance(view["run"]["durationMs"], int) and view["spans"]
    assert all(isinstance(s["durationMs"], int) for s in view["spans"])
    for span in view["spans"]:  # whole, and the nearest whole number
        assert abs(span["durationMs"] - (span["endTimeUnixNano"] - span["startTimeUnixNano"]) / 1e6) <= 0.5


# ---- runs the tailer could not read: in the API and on the pages --------------------------------


def _damaged_copy(harness_out: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """The harness's world with one run's event record cut short for good (mtime an hour ago, past
    the grace period) and another run's events gone (its record still says completed)."""
    data = tmp_path / "world"
    shutil.copytree(harness_out / "local-data", data)
    results = summary(harness_out, "local")
    cut, emptied = results["sequential"]["runId"], results["parallel"]["runId"]
    record = sorted((data / "events").glob(f"{cut}-*.json"))[1]
    record.write_bytes(record.read_bytes()[:20])
    old = time.time() - 3600
    os.utime(record, (old, old))
    for path in (data / "events").glob(f"{emptied}-*.json"):
        path.unlink()
    return data, cut, emptied


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


def test_unreadable_runs_show_in_the_api_and_on_the_pages(collector, harness_out, tmp_path, browser):
    data, cut, emptied = _damaged_copy(harness_out, tmp_path)
    service = collector(world=BackendConfig("local", data_dir=str(data)), tail_interval=0.1)
    _loaded(service, 9)
    deadline = time.monotonic() + 30
    while get_json(f"{service.url}/api/runs").get("unreadable", {}).get("count", 0) < 2:
        assert time.monotonic() < deadline, get_json(f"{service.url}/api/runs")
        time.sleep(0.1)
    # a finished run that was read whole, then had a record published that stays unreadable; its
    # id is just behind the run's last one (a writer whose clock runs behind), so resuming after
    # the last id read would never see it
    late = summary(harness_out, "local")["retry"]["runId"]
    last = sorted((data / "events").glob(f"{late}-*.json"))[-1].stem.split("-", 1)[1]
    behind = ULID.from_int(int(ULID.from_str(last.removeprefix("evnt_"))) - 1)
    record = data / "events" / f"{late}-evnt_{behind}.json"
    record.write_text('{"eventType": "step_')
    old = time.time() - 3600
    os.utime(record, (old, old))
    while get_json(f"{service.url}/api/runs")["unreadable"]["count"] < 3:
        assert time.monotonic() < deadline, get_json(f"{service.url}/api/runs")["unreadable"]
        time.sleep(0.1)

    page = get_json(f"{service.url}/api/runs?limit=100")
    named = {r["runId"]: r["problem"] for r in page["unreadable"]["runs"]}
    assert set(named) == {cut, emptied, late} and page["unreadable"]["count"] == 3
    assert "unreadable event record" in named[cut] and str(data / "events") in named[cut]
    assert "its record says completed but its event log reads empty" in named[emptied]
    rows = {r["runId"]: r for r in page["data"]}
    assert cut not in rows and emptied not in rows  # nothing of them reached the store: named above only
    assert rows[late]["problems"] == [named[late]] and str(record) in named[late]
    assert all("problems" not in r for r in page["data"] if r["runId"] != late)  # healthy runs: as before
    assert get_json(f"{service.url}/api/runs/{late}")["run"]["problems"] == [named[late]]
    status, _, body = http("GET", f"{service.url}/api/runs/{cut}")
    assert status == 404 and json.loads(body)["problems"] == [named[cut]]
    assert (
        "problems" not in get_json(f"{service.url}/api/runs/{summary(harness_out, 'local')['sleep']['runId']}")["run"]
    )

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    try:
        tab = context.new_page()
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(service.url + "/")
        tab.wait_for_selector("#unreadable li")
        box = tab.locator("#unreadable").inner_text()
        assert "3 runs could not be read from the world" in box and cut in box and emptied in box
        marked = tab.locator("tr.run:has(.badge.unreadable)")
        assert marked.count() == 1 and late in marked.inner_text()
        tab.goto(f"{service.url}/runs/{late}")
        tab.wait_for_selector("#problems .unreadable")
        assert str(record) in tab.locator("#problems").inner_text()
        tab.wait_for_selector("#wf-inner .row")  # the rest of the page is drawn as before
        tab.goto(f"{service.url}/runs/{cut}")
        tab.wait_for_selector("#problems .unreadable")
        assert "unreadable event record" in tab.locator("#problems").inner_text()
    finally:
        context.close()
    assert errors == []


# ---- wft trace-id -----------------------------------------------------------------------------------


def test_trace_id_uses_the_stored_traceparent():
    """The otel-cut runs were made with OpenTelemetry on: their records carry a traceparent."""
    data = FIXTURES / "otel-cut"
    run_file = sorted((data / "runs").glob("*.json"))[0]
    run = json.loads(run_file.read_text())
    traceparent = run["executionContext"]["traceCarrier"]["traceparent"]
    result = wft("trace-id", run["runId"], "--dir", str(data))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == traceparent.split("-")[1]
    by_id = wft("trace-id", run["runId"], "--no-world")
    assert by_id.returncode == 0 and by_id.stdout.strip() != traceparent.split("-")[1]
    from ulid import ULID

    assert by_id.stdout.strip() == f"{int(ULID.from_str(run['runId'][5:])):032x}"


def test_trace_id_of_a_run_without_traceparent_and_of_a_missing_run(harness_out):
    run_id = summary(harness_out, "local")["retry"]["runId"]
    data = str(harness_out / "local-data")
    assert wft("trace-id", run_id, "--dir", data).stdout == wft("trace-id", run_id, "--no-world").stdout
    missing = wft("trace-id", "wrun_" + "0" * 26, "--dir", data)
    assert missing.returncode == 1 and "no run" in missing.stderr and "Traceback" not in missing.stderr
