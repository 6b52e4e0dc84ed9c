"""``wft`` as users run it: a subprocess, real data, a real OTLP receiver."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess

from telemetry.backends.local import LocalWorld
from telemetry.reading import all_runs, run_trace

from .conftest import wft


def test_help_lists_the_commands():
    result = wft("--help")
    assert result.returncode == 0
    for command in ("runs", "export", "follow"):
        assert f"    {command} " in result.stdout


def test_runs_json_agrees_with_the_sdk_cli(harness_out, harness_app_dir):
    data_dir = harness_out / "local-data"
    sdk = subprocess.run(
        [str(harness_app_dir / "node_modules/.bin/workflow"), "inspect", "runs", "--json"],
        cwd=harness_app_dir,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WORKFLOW_LOCAL_DATA_DIR": str(data_dir), "WORKFLOW_TARGET_WORLD": "local"},
    )
    assert sdk.returncode == 0, sdk.stderr
    ours = wft("runs", "--world", "local", "--dir", str(data_dir), "--json")
    assert ours.returncode == 0, ours.stderr
    expected = json.loads(sdk.stdout[sdk.stdout.index("{") :])
    assert len(expected["data"]) == 11 and expected["hasMore"] is False and expected["cursor"]
    assert json.loads(ours.stdout) == expected  # pagination included (page by page: test_cli_runs)


def test_runs_table_and_filters_on_postgres(harness_pg_url, harness_out):
    result = wft("runs", "--world", "postgres", "--url", harness_pg_url, "--status", "failed")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["runId", "workflowName", "status", "startedAt", "completedAt"]
    assert len(lines) == 3 and all(" failed " in line for line in lines[1:])
    env_only = wft(
        "runs",
        "--limit",
        "3",
        env={"WORKFLOW_TARGET_WORLD": "@workflow/world-postgres", "WORKFLOW_POSTGRES_URL": harness_pg_url},
    )
    assert env_only.returncode == 0 and len(env_only.stdout.strip().splitlines()) == 4


def test_bad_input_is_one_clear_line(tmp_path):
    newer = tmp_path / "data5"
    newer.mkdir()
    (newer / "version.txt").write_text("@workflow/world-local@6.0.0-beta.1\n")  # 4.x and 5.x are read
    result = wft("runs", "--dir", str(newer))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "6.0.0-beta.1" in result.stderr and "4.x" in result.stderr
    missing = wft("runs", "--dir", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not found" in missing.stderr
    unknown = wft("runs", env={"WORKFLOW_TARGET_WORLD": "mongo"})
    assert unknown.returncode == 2 and "unknown world 'mongo'" in unknown.stderr


def _expected_spans(data_dir):
    world = LocalWorld(data_dir)

    async def go():
        return [s async for run in all_runs(world) for s in (await run_trace(world, run)).spans]

    return asyncio.run(go())


def test_export_ships_exactly_the_run_traces(harness_out, otlp_receiver):
    data_dir = harness_out / "local-data"
    result = wft(
        "export",
        "--world",
        "local",
        "--dir",
        str(data_dir),
        "--otlp",
        otlp_receiver.url,
        env={"OTEL_SERVICE_NAME": "my-workflows", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"},
    )
    assert result.returncode == 0, result.stderr
    expected = _expected_spans(data_dir)
    received = otlp_receiver.by_id()
    assert len(otlp_receiver.spans) == len(expected) == len(received)
    assert set(otlp_receiver.encodings) == {"gzip"}
    assert f"exported 11 runs, {len(expected)} spans, 0 errors" in result.stderr
    for span in expected:
        got = received[f"{span.context.span_id:016x}"]
        assert got.trace_id == f"{span.context.trace_id:032x}"
        assert got.name == span.name
        assert got.parent_span_id == (f"{span.parent.span_id:016x}" if span.parent else "")
        assert (got.start, got.end) == (span.start_time, span.end_time)
        assert got.attributes == dict(span.attributes)
        assert got.status_code == span.status.status_code.value
        assert [e[0] for e in got.events] == [e.name for e in span.events]
        assert got.resource["service.name"] == "my-workflows"
        assert got.resource["deployment.environment"] == "test"
        assert got.resource["workflow.world"] == "local"
    first_ids = sorted(received)
    otlp_receiver.clear()
    again = wft("export", "--dir", str(data_dir), "--otlp", otlp_receiver.url)
    assert again.returncode == 0
    assert sorted(otlp_receiver.by_id()) == first_ids  # a second export yields identical ids


def test_export_honours_otel_endpoint_and_retries_503(harness_out, otlp_receiver):
    otlp_receiver.fail_next = 2
    result = wft(
        "export", "--dir", str(harness_out / "local-data"), env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.url}
    )
    assert result.returncode == 0, result.stderr
    assert otlp_receiver.requests >= 3  # 2 refused attempts, then the spans (small runs share a request)
    assert len(otlp_receiver.by_id()) == len(_expected_spans(harness_out / "local-data"))


def test_export_failure_is_reported_not_silent(harness_out, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(harness_out / "local-data", data)
    result = wft("export", "--dir", str(data), "--otlp", "http://127.0.0.1:9", "--timeout", "1", timeout=300)
    assert result.returncode != 0
    assert "failed" in result.stderr and "127.0.0.1:9/v1/traces" in result.stderr
