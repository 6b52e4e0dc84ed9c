"""The real SDK app sends its own spans to the collector while the collector follows its world:
every run is listed, and each run's view holds both the event-log trace and the SDK's spans."""

from __future__ import annotations

import subprocess
import time

import pytest

from telemetry.backends import BackendConfig

from .conftest import HARNESS, get_json, summary


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_sdk_spans_and_event_log_are_stitched_per_run(collector, tmp_path, protocol):
    out = tmp_path / "harness"
    service = collector(world=BackendConfig("local", data_dir=str(out / "local-data")), tail_interval=0.1)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": service.url, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    import os

    result = subprocess.run(
        ["bash", str(HARNESS / "run.sh"), "local", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = summary(out, "local")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        runs = {r["runId"]: r for r in get_json(f"{service.url}/api/runs?limit=100")["data"]}
        if all(runs.get(r["runId"], {}).get("status") == r["status"] for r in results.values()):
            break
        time.sleep(0.2)
    for scenario, expected in results.items():
        run = runs[expected["runId"]]
        assert run["status"] == expected["status"], scenario
        assert run["workflowName"] == expected["workflowName"]
        view = get_json(f"{service.url}/api/runs/{expected['runId']}")
        world_spans = [s for s in view["spans"] if s["source"] == "world"]
        sdk_spans = [s for s in view["spans"] if s["source"] == "otlp"]
        assert any(s["name"].startswith("run ") for s in world_spans), scenario
        assert any(s["name"].startswith("WORKFLOW ") for s in sdk_spans), scenario
        assert {s["scope"] for s in sdk_spans} >= {"workflow"}
        # the app had OpenTelemetry, so the run stored a traceparent: one trace for both
        (root,) = [s for s in world_spans if s["name"].startswith("run ")]
        assert root["parentSpanId"] and root["traceId"] in {s["traceId"] for s in sdk_spans}, scenario
        assert view["events"] and view["events"][0]["eventType"] in ("run_created", "run_started")
        steps = [s for s in world_spans if s["name"].startswith("step ")]
        assert run["steps"] == len(steps), scenario
    hook_view = get_json(f"{service.url}/api/runs/{results['hook']['runId']}")
    resumes = [s for s in hook_view["spans"] if s["name"] == "hook.resume"]
    run_trace = next(s["traceId"] for s in hook_view["spans"] if s["name"].startswith("run "))
    assert resumes and all(s["traceId"] != run_trace for s in resumes)  # stitched across traces by run id
    assert get_json(f"{service.url}/api/runs/{results['fatal']['runId']}")["run"]["errors"] == 1
    assert get_json(f"{service.url}/api/runs/{results['retry']['runId']}")["run"]["errors"] == 1
    assert service.metrics.spans_accepted > 100 and service.metrics.tailer_spans > 50
