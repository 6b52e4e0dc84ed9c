"""The sidecar's view of Python workflows equals vercel-workflow's own.

The workflows of ``tests/pyworkflows/apps.py`` run in-process on vercel-workflow's local world (a fresh
process per data dir, ``tests/pyworkflows/run.py``), which reports what its own World API says of
each run: status, error, steps with their attempts and errors, event types, streams. The same
comparison runs on the cut fixture ``tests/fixtures/pylocal-cut`` against its ``MANIFEST.json``.
What the sidecar shows must be exactly that, on every surface: ``wft runs --json``, ``wft export``
(to a real OTLP/HTTP receiver), ``wft follow --once``, and the collector's world tailer. And a run
whose record says it ran but whose log reads empty is reported on every one of them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from telemetry.backends import BackendConfig

from .conftest import get_json, wft

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "pylocal-cut"
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """Every scenario run now by the real package, and its own report of each run."""
    data = tmp_path_factory.mktemp("pyworkflows") / "data"
    done = subprocess.run(
        [sys.executable, "-m", "tests.pyworkflows.run", str(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return data, json.loads(done.stdout)


@pytest.fixture(params=["fresh", "cut"])
def world(request, tmp_path) -> tuple[Path, dict[str, Any]]:
    """(data dir, vercel-workflow's report per scenario): a fresh run, or the cut fixture."""
    if request.param == "fresh":
        data, report = request.getfixturevalue("fresh_run")
    else:
        data, report = FIXTURE, json.loads((FIXTURE / "MANIFEST.json").read_text())
    target = tmp_path / "data"
    shutil.copytree(data, target, ignore=shutil.ignore_patterns("MANIFEST.json"))
    return target, report


# -- the two views, made comparable ------------------------------------------------------------------


def expected_view(facts: dict[str, Any]) -> dict[str, Any]:
    """What a trace of the run must show, from vercel-workflow's report. Only finished work is a
    span: a run still running has no run span, a hook still waiting no hook span."""
    events = facts["events"]
    terminal = facts["status"] in TERMINAL
    return {
        "status": facts["status"] if terminal else None,
        "error": facts["error"],
        "error_code": facts["error_code"],
        "events": len(events) if terminal else None,
        # a step's record keeps the last error it saw, also once a later attempt completed it
        "steps": {
            step_id: {"name": s["name"], "status": s["status"], "attempt": s["attempt"], "error": s["error"]}
            for step_id, s in facts["steps"].items()
        },
        "attempts": {step_id: s["attempt"] for step_id, s in facts["steps"].items()},
        "sleeps": events.count("wait_completed"),
        "hooks_received": events.count("hook_received"),
    }


def _error_text(events: list[tuple[str, dict[str, Any]]]) -> str | None:
    found = [a for name, a in events if name == "exception"]
    return f"{found[-1]['exception.type']}: {found[-1]['exception.message']}" if found else None


def sidecar_view(spans: list[tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]]) -> dict[str, Any]:
    """Per run id, the same facts read off its spans: (name, attributes, [(event name, attributes)])."""
    runs: dict[str, Any] = {}
    for _, attributes, events in spans:
        run = runs.setdefault(
            attributes["workflow.run.id"],
            {
                "status": None,
                "error": None,
                "error_code": None,
                "events": None,
                "steps": {},
                "attempts": Counter(),
                "sleeps": 0,
                "hooks_received": 0,
                "attempt_errors": [],
            },
        )
        kind = attributes["workflow.span.kind"]
        if kind == "run":
            run["status"] = attributes["workflow.run.status"]
            run["error"] = _error_text(events)
            run["error_code"] = attributes.get("error.type")
            run["events"] = attributes["workflow.events.count"]
        elif kind == "step":
            run["steps"][attributes["step.id"]] = {
                "name": attributes["step.name"],
                "status": attributes["step.status"],
                "attempt": attributes["step.attempt"],
                "error": _error_text(events),
            }
        elif kind == "attempt":
            run["attempts"][attributes["step.id"]] += 1
            if _error_text(events):
                run["attempt_errors"].append((attributes["step.attempt"], attributes["step.id"], _error_text(events)))
        elif kind == "sleep":
            run["sleeps"] += 1
        elif kind == "hook":
            run["hooks_received"] += attributes.get("workflow.hook.received", 0)
    for run in runs.values():
        run["attempts"] = dict(run["attempts"])
        for _, step_id, error in sorted(run.pop("attempt_errors")):  # the last error each step saw
            step = run["steps"].get(step_id)
            if step is not None and step["status"] == "completed":
                step["error"] = error
    return runs


def expected_views(report: dict[str, Any]) -> dict[str, Any]:
    """Per run id; runs that show no span at all (still running, nothing finished) left out."""
    views = {facts["run_id"]: expected_view(facts) for facts in report.values()}
    return {run_id: v for run_id, v in views.items() if v["status"] or v["steps"] or v["sleeps"] or v["hooks_received"]}


def received(receiver) -> list[tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]]:
    return [(s.name, s.attributes, [(name, attrs) for name, _, attrs in s.events]) for s in receiver.spans]


# -- every surface ----------------------------------------------------------------------------------


def test_runs_json_is_what_vercel_workflow_reports(world):
    data, report = world
    listed = wft("runs", "--dir", str(data), "--json", "--limit", "100")
    assert listed.returncode == 0 and not listed.stderr, listed.stderr
    ours = {r["runId"]: r for r in json.loads(listed.stdout)["data"]}
    assert set(ours) == {facts["run_id"] for facts in report.values()}
    for facts in report.values():
        run = ours[facts["run_id"]]
        assert "problems" not in run
        assert (run["status"], run["workflowName"], run["specVersion"]) == (facts["status"], facts["workflow"], 5)
        error = run.get("error")
        assert (f"{error['name']}: {error['message']}" if error else None) == facts["error"]
        assert (error or {}).get("code") == facts["error_code"]


def test_export_shows_every_run_step_attempt_error_sleep_and_hook(world, otlp_receiver):
    data, report = world
    done = wft("export", "--dir", str(data), "--otlp", otlp_receiver.url)
    assert done.returncode == 0, done.stderr
    assert f"exported {len(report)} runs" in done.stderr
    assert sidecar_view(received(otlp_receiver)) == expected_views(report)
    by_name = {facts["run_id"]: name for name, facts in report.items()}
    kinds = {
        (by_name[s.attributes["workflow.run.id"]], s.attributes["workflow.span.kind"]) for s in otlp_receiver.spans
    }
    assert ("sleeper", "sleep") in kinds and ("approval", "hook") in kinds
    assert not any(name == "waiting" for name, _ in kinds)  # still waiting on its hook: nothing finished
    racing = [s for s in otlp_receiver.spans if by_name[s.attributes["workflow.run.id"]] == "racing"]
    run_end = next(s.end for s in racing if s.attributes["workflow.span.kind"] == "run")
    assert any(s.attributes.get("step.name", "").endswith("//straggler") and s.end > run_end for s in racing)


def test_follow_sends_what_export_sends(world, otlp_receiver, tmp_path):
    data, report = world
    assert wft("export", "--dir", str(data), "--otlp", otlp_receiver.url).returncode == 0
    exported = set(otlp_receiver.by_id())
    otlp_receiver.clear()
    checkpoint = tmp_path / "follow.sqlite3"
    followed = wft("follow", "--once", "--dir", str(data), "--otlp", otlp_receiver.url, "--checkpoint", str(checkpoint))
    assert followed.returncode == 0, followed.stderr
    assert set(otlp_receiver.by_id()) == exported
    assert sidecar_view(received(otlp_receiver)) == expected_views(report)


def test_the_collectors_tailer_stores_what_vercel_workflow_reports(world, collector, otlp_receiver):
    data, report = world
    assert wft("export", "--dir", str(data), "--otlp", otlp_receiver.url).returncode == 0
    expected_spans = len(otlp_receiver.spans)
    service = collector(world=BackendConfig("local", data_dir=str(data)), tail_interval=0.05)
    deadline = time.monotonic() + 60
    while service.metrics.tailer_spans < expected_spans and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.metrics.tailer_spans == expected_spans
    assert service.tailer.follower.problems == {}
    spans = []
    for name, facts in report.items():
        view = get_json(f"{service.url}/api/runs/{facts['run_id']}")
        assert view["run"]["status"] == facts["status"], name
        assert [e["eventType"] for e in view["events"]] == facts["events"], name
        spans += [
            (s["name"], s["attributes"], [(e["name"], e["attributes"]) for e in s["events"]]) for s in view["spans"]
        ]
        if name == "waiting":  # the hook left waiting shows as what the run waits on
            assert [w.get("kind") for w in view["run"]["waitingOn"]] == ["hook"], view["run"]["waitingOn"]
    assert sidecar_view(spans) == expected_views(report)


def test_a_run_whose_log_reads_empty_is_a_problem_everywhere(tmp_path, otlp_receiver, collector):
    """The bug this layout work came from: a run listed as completed, exported as "0 spans, fine"."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data, ignore=shutil.ignore_patterns("MANIFEST.json"))
    report = json.loads((FIXTURE / "MANIFEST.json").read_text())
    victim = report["sequential"]["run_id"]
    for path in (data / "events" / victim).iterdir():
        path.unlink()
    folder = str(data / "events" / victim)

    exported = wft("export", "--dir", str(data), "--otlp", otlp_receiver.url)
    assert exported.returncode == 1 and "Traceback" not in exported.stderr
    assert f"wft export: run {victim}: its record says completed but its event log reads empty" in exported.stderr
    assert exported.stderr.strip().splitlines()[-1].startswith("wft export: skipped 1 run")
    assert folder in exported.stderr.strip().splitlines()[-1]
    assert victim not in {s.attributes["workflow.run.id"] for s in otlp_receiver.spans}

    table = wft("runs", "--dir", str(data))
    rows = {line.split()[0]: line.split()[2] for line in table.stdout.strip().splitlines()[1:]}
    assert rows[victim] == "completed!" and all(not s.endswith("!") for r, s in rows.items() if r != victim)
    assert victim in table.stderr and folder in table.stderr
    listed = json.loads(wft("runs", "--dir", str(data), "--json").stdout)["data"]
    (marked,) = [r for r in listed if "problems" in r]
    assert marked["runId"] == victim and "event log reads empty" in marked["problems"][0]

    followed = wft(
        "follow", "--once", "--dir", str(data), "--otlp", otlp_receiver.url, "--checkpoint", str(tmp_path / "cp")
    )
    assert followed.returncode == 1 and victim in followed.stderr and "event log reads empty" in followed.stderr

    service = collector(world=BackendConfig("local", data_dir=str(data)), tail_interval=0.05)
    follower = service.tailer.follower
    deadline = time.monotonic() + 30
    while victim not in follower.problems and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(follower.problems) == [victim]
    assert "event log reads empty" in follower.problems[victim] and folder in follower.problems[victim]
    with urllib.request.urlopen(f"{service.url}/metrics", timeout=10) as response:
        assert "wft_tailer_unreadable_runs 1" in response.read().decode()


def test_an_instrumented_python_app_and_its_event_log_make_one_run_view(tmp_path, collector):
    """The real vercel-workflow app, instrumented with ``VercelWorkflowInstrumentor`` and exporting
    OTLP to the collector, while the collector follows its data dir: each run's view holds the
    event-log trace and the app's own spans, in one trace, with no benign conflict as an error."""
    data = tmp_path / "data"
    service = collector(world=BackendConfig("local", data_dir=str(data)), tail_interval=0.05)
    done = subprocess.run(
        [sys.executable, "-m", "tests.pyworkflows.run", str(data), "--otlp", service.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    for name, facts in report.items():
        deadline = time.monotonic() + 30
        while True:
            view = get_json(f"{service.url}/api/runs/{facts['run_id']}")
            kinds = [s["attributes"].get("workflow.span.kind") for s in view["spans"]]
            finished = "run" in kinds or facts["status"] not in ("completed", "failed", "cancelled")
            if (view["run"]["status"] == facts["status"] and finished) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert view["run"]["status"] == facts["status"], name
        event_log = {s["traceId"] for s in view["spans"] if "workflow.span.kind" in s["attributes"]}
        assert len(event_log) <= 1, (name, event_log)  # none yet for a run waiting with nothing finished
        app = [s for s in view["spans"] if "workflow.span.kind" not in s["attributes"]]
        assert app, f"{name}: the app's own spans did not reach the run view"
        executions = [s for s in app if s["name"].startswith(("WORKFLOW ", "STEP "))]
        assert executions, f"{name}: no workflow/step execution spans"
        # one trace per run: the executions and the event-log spans (a hook resumed from outside
        # the run starts a trace of its own, as in the TS SDK; it is stitched by run id)
        if event_log:
            assert {s["traceId"] for s in executions} == event_log, f"{name}: not one trace"
        steps = [s for s in view["spans"] if s["attributes"].get("workflow.span.kind") == "step"]
        assert len(steps) == len(facts["steps"]), name
        for span in app:  # the local world stores a late stream write; nothing about it is an error
            if span["name"].startswith("world.streams.") or span["attributes"].get("workflow.conflict") == "benign":
                assert span["status"]["code"] != 2, (name, span["name"], span["status"])
