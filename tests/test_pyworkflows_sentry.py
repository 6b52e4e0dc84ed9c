"""Sentry in a real vercel-workflow app: the real ``sentry-sdk``, in-process and through the collector's relay.

The app is ``tests/pyworkflows`` (``apps.py``, driven by ``run.py``) on vercel-workflow's local world, in a fresh
process; sentry-sdk's logging integration turns the ``vercel.workflow`` logger's WARNINGs and ERRORs into events,
which is how vercel-workflow reports step retries, step failures, failed runs and the races it handled. The same
app runs twice: once with ``telemetry.sentry``'s filter in-process, once with a plain sentry-sdk sending to the
collector's relay. Both must keep the same events and drop the same benign ones.

vercel-workflow's Vercel world is driven against a loopback stand-in for the workflow server, so its own
``WorkflowWorldError`` / ``EntityConflictError`` are raised by its own code with its own messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from aiohttp import web

from telemetry.sentry import drop_counts
from telemetry.sentry import init as sentry_init

from .threaded_server import serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
#: ``fan_out``'s four parallel steps each re-queue the workflow as they finish; the replays race to complete
#: the run, and the losers' ``run_completed`` gets vercel-workflow's EntityConflictError, which it catches and
#: logs as a WARNING, "Workflow run wrun_… was already completed": the benign post-completion conflict
SCENARIOS = "fan_out,retrying,fatal,failing"
APP = "tests.pyworkflows.apps"

#: The app in a fresh process (vercel-workflow binds its world when ``apps`` is imported), with sentry-sdk's
#: logging integration at WARNING (so retries are events too) and either our filter or none.
DRIVER = """
import json, logging, sys
import sentry_sdk
from sentry_sdk.integrations.logging import LoggingIntegration

data, mode, dsn, counts, only = sys.argv[1:6]


class CountRaces(logging.Handler):
    # how many lost completion races vercel-workflow itself logged: what the filter must drop

    races = 0

    def emit(self, record):
        if record.levelno >= logging.WARNING and "already completed" in record.getMessage():
            CountRaces.races += 1


logging.getLogger().addHandler(CountRaces())
options = {
    "default_integrations": False,
    "integrations": [LoggingIntegration(level=logging.INFO, event_level=logging.WARNING)],
}
if mode == "filtered":
    from telemetry.sentry import drop_counts, init
    init(dsn, **options)
else:
    sentry_sdk.init(dsn, **options)
from tests.pyworkflows import run
sys.argv = ["run", data, "--only", only]
code = run.main()
sentry_sdk.flush(10)
with open(counts, "w") as fh:
    json.dump({"races": CountRaces.races, "dropped": drop_counts() if mode == "filtered" else {}}, fh)
sys.exit(code)
"""

RETRY = (
    "[Workflows] '%s' - Encountered %s while executing step '%s' (attempt %d): %s"
    "\n\n  This step has failed but will be retried"
)
FATAL = (
    "[Workflows] '%s' - Encountered Error while executing step '%s' (attempt %d): %s"
    "\n\n  Error is fatal\n  Bubbling error to parent workflow"
)
EXHAUSTED = (
    "[Workflows] '%s' - Encountered Error while executing step '%s' (attempt %d, %d %s): %s"
    "\n\n  Max retries reached\n  Bubbling error to parent workflow"
)
RUN_FAILED = "[Workflows] '%s' - workflow run failed: %s"


def _fp(workflow: str, step: str, error: str) -> tuple[str, ...]:
    return ("workflow-step", f"workflow//{APP}//{workflow}", f"step//{APP}//{step}", error)


#: (scenario, level, log template, exception types) of every event vercel-workflow's logging makes for the
#: scenarios that must reach Sentry, and the fingerprint the in-process filter gives it
KEPT = [
    ("retrying", "warning", RETRY, (), _fp("retrying", "rate_limited", "RetryableError")),
    ("fatal", "warning", RETRY, (), _fp("fatal", "doomed", "ValueError")),
    ("fatal", "error", FATAL, ("FatalError",), _fp("fatal", "doomed", "FatalError")),
    ("failing", "warning", RETRY, (), _fp("failing", "always_fails", "ValueError")),
    ("failing", "error", EXHAUSTED, ("ValueError",), _fp("failing", "always_fails", "ValueError")),
    ("failing", "error", RUN_FAILED, ("ValueError", "FatalError"), None),
]


def _run_app(tmp_path: Path, mode: str, dsn: str) -> tuple[dict[str, Any], dict[str, Any]]:
    counts = tmp_path / f"{mode}-drops.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTRY_", "WORKFLOW_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / f"{mode}-data"), mode, dsn, str(counts), SCENARIOS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    return report, json.loads(counts.read_text())


def _run_until_a_race(tmp_path: Path, mode: str, dsn: str, upstream: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fan-out's completion race is real concurrency: most runs lose it once or more, some never do. Run
    the app again (fresh world, upstream emptied) until vercel-workflow logged at least one race, so the
    drop is always exercised; the caller then checks the count dropped equals the count raced."""
    for attempt in range(5):
        with upstream.lock:
            upstream.arrivals.clear()
        where = tmp_path / f"try{attempt}"
        where.mkdir()
        report, counts = _run_app(where, mode, dsn)
        if counts["races"] >= 1:
            return report, counts
    raise AssertionError("the fan-out never raced its completion in 5 runs")


def _scenario_of(event: dict[str, Any], report: dict[str, Any]) -> str:
    text = json.dumps(event.get("logentry")) + json.dumps(event.get("exception"))
    found = [name for name, facts in report.items() if facts["run_id"] in text]
    assert len(found) == 1, (found, text[:300])
    return found[0]


def _summary(events: list[dict[str, Any]], report: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows = []
    for event in events:
        types = tuple(v["type"] for v in (event.get("exception") or {}).get("values") or [])
        template = (event.get("logentry") or {}).get("message")
        rows.append((_scenario_of(event, report), event["level"], template, types))
    return sorted(rows)


def _wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_real_app_in_process_drops_the_races_keeps_failures_and_groups_retries(tmp_path, sentry_upstream):
    report, counts = _run_until_a_race(tmp_path, "filtered", sentry_upstream.dsn(), sentry_upstream)
    assert report["fan_out"]["status"] == "completed" and report["failing"]["status"] == "failed"
    events = sentry_upstream.events()
    # the fan-out's lost completion races (see SCENARIOS) never arrive: the filter dropped each of them
    assert counts["dropped"].get("racing-completion", 0) == counts["races"], counts
    assert not [e for e in events if "already completed" in e["logentry"]["formatted"]]  # (breadcrumbs keep them)
    assert _summary(events, report) == sorted(row[:4] for row in KEPT)

    for event in events:
        scenario = _scenario_of(event, report)
        assert event["tags"]["workflow.run.id"] == report[scenario]["run_id"]
        expected = next(row[4] for row in KEPT if row[:4] == _summary([event], report)[0])
        assert tuple(event.get("fingerprint") or ()) == (expected or ())
        if expected:  # the step vercel-workflow said was executing, by its own get_step_metadata()
            step = next(s for s, facts in report[scenario]["steps"].items() if facts["name"] == expected[2])
            assert event["tags"]["step.id"] == step and event["tags"]["step.name"] == expected[2]
            assert event["tags"]["workflow.name"] == expected[1]

    # the retried step's attempts (a WARNING per retry, then the ERROR) are one issue; other errors are not
    fingerprints = Counter(tuple(e["fingerprint"]) for e in events if e.get("fingerprint"))
    assert fingerprints[_fp("failing", "always_fails", "ValueError")] == 2
    assert report["failing"]["steps"] and max(f["attempt"] for f in report["failing"]["steps"].values()) == 2
    assert fingerprints[_fp("fatal", "doomed", "ValueError")] == fingerprints[_fp("fatal", "doomed", "FatalError")] == 1


def test_a_real_app_through_the_relay_gets_the_same_verdict(tmp_path, collector, sentry_upstream):
    service = collector(sentry_upstream=sentry_upstream.dsn())
    before = service.relay.dropped.get("racing-completion", 0)
    report, counts = _run_until_a_race(
        tmp_path, "plain", f"http://clientkey@127.0.0.1:{service.port}/42", sentry_upstream
    )
    _wait_for(lambda: len(sentry_upstream.events()) >= len(KEPT))
    _wait_for(lambda: service.relay.dropped.get("racing-completion", 0) - before >= counts["races"])
    time.sleep(0.3)
    assert _summary(sentry_upstream.events(), report) == sorted(row[:4] for row in KEPT)
    # the unfiltered app did send every benign race it logged (earlier tries' too), and the relay dropped them
    assert service.relay.dropped["racing-completion"] >= counts["races"] >= 1


# -- vercel-workflow's Vercel world, against a loopback workflow server ------------------------------------------

RUN = "wrun_01KQKXJQGJ78X9YSF34QG3GHFX"
STEP = "step_01M80NBG4PGVG2CY8WDX3NXEX2"
STREAM = "strm_01KQKXJQGJ78X9YSF34QG3GHFX_user"
BROKEN = "strm_01KQKXJQGJ78X9YSF34QG3GHFX_user_YnJva2Vu"
DONE = {"success": False, "error": "conflict", "message": f'Run "{RUN}" is already completed'}


@pytest.fixture
def vercel_world(monkeypatch):
    """vercel-workflow's own ``VercelWorld``, its server a stand-in: the run is completed, so stream writes and
    closes get the server's 409, and so does a step completion; one stream answers 503."""

    async def answer(request: web.Request) -> web.Response:
        if request.path.endswith(f"/stream/{BROKEN}"):
            return web.json_response({"error": "unavailable"}, status=503, headers={"x-vercel-id": "iad1::z"})
        return web.json_response(DONE, status=409, headers={"x-vercel-id": "iad1::abc"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    url, stop = serve_in_thread(app)
    monkeypatch.setenv("VERCEL_WORKFLOW_SERVER_URL", url)
    from vercel.workflow._internal.worlds.vercel import VercelWorld

    yield VercelWorld(token="test-token")
    stop()


def _capture_world_failures(world: Any) -> None:
    """Each call fails in vercel-workflow's own code; each failure is reported as an app would report it."""
    from vercel.workflow._internal import world as w

    calls = [
        lambda: world.streams_write(RUN, STREAM, b"late chunk"),
        lambda: world.streams_write_multi(RUN, STREAM, [b"a", b"b"]),
        lambda: world.streams_close(RUN, STREAM),
        lambda: world.events_create(RUN, w.StepCompletedEventData(result=b"devl1").into_event(STEP)),
        lambda: world.streams_write(RUN, BROKEN, b"chunk"),
    ]

    async def report_all() -> None:
        for call in calls:
            try:
                await call()
            except Exception:
                sentry_sdk.capture_exception()

    asyncio.run(report_all())
    sentry_sdk.flush(10)


#: what must reach Sentry of the five: the 409 on a step completion, and the stream write's 503
WORLD_KEPT = [
    ("EntityConflictError", f'Run "{RUN}" is already completed'),
    ("WorkflowWorldError", f"Stream write failed: HTTP 503 (PUT /v2/runs/{RUN}/stream/{BROKEN}; x-vercel-id=iad1::z)"),
]


def _kept(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["exception"]["values"][-1]["type"], e["exception"]["values"][-1]["value"]) for e in events]


def test_vercel_worlds_own_stream_conflicts_in_process(vercel_world, sentry_upstream):
    before = drop_counts()
    sentry_init(sentry_upstream.dsn(), default_integrations=False)
    try:
        _capture_world_failures(vercel_world)
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()
    assert _kept(sentry_upstream.events()) == WORLD_KEPT
    after = drop_counts()
    assert sum(after.values()) - sum(before.values()) == 3


def test_vercel_worlds_own_stream_conflicts_through_the_relay(vercel_world, collector, sentry_upstream):
    service = collector(sentry_upstream=sentry_upstream.dsn())
    sentry_sdk.init(dsn=f"http://clientkey@127.0.0.1:{service.port}/42", default_integrations=False)
    try:
        _capture_world_failures(vercel_world)
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()
    _wait_for(lambda: len(sentry_upstream.events()) >= len(WORLD_KEPT))
    time.sleep(0.3)
    assert _kept(sentry_upstream.events()) == WORLD_KEPT
    # the Python SDK's message has no "is already completed" body: its own rule recognises it
    assert service.relay.dropped["py-stream-409"] == 3
