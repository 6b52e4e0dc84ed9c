"""``wft export`` of some runs only: ``--run`` (repeatable), ``--workflow`` (function, file or full
id), ``--status``, ``--since``/``--until``, in one process and in several (``--jobs``), on the real
harness's world-local data and world-postgres dump, into a real OTLP receiver: exactly the selected
runs' spans arrive, each once."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from telemetry.backends.local import LocalWorld
from telemetry.backends.postgres import PostgresWorld
from telemetry.reading import all_runs, run_trace

from .conftest import summary, wft


def _spans_by_run(world) -> tuple[dict[str, set[str]], dict[str, object]]:
    """(run id → its span ids, run id → its run record), as a full one-shot export builds them."""

    async def go():
        spans, runs = {}, {}
        try:
            async for run in all_runs(world):
                runs[run.run_id] = run
                spans[run.run_id] = {f"{s.context.span_id:016x}" for s in (await run_trace(world, run)).spans}
        finally:
            await world.close()
        return spans, runs

    return asyncio.run(go())


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(scope="module")
def local_truth(harness_out):
    return _spans_by_run(LocalWorld(harness_out / "local-data"))


def _export(receiver, *args: str) -> tuple[set[str], str]:
    receiver.clear()
    result = wft("export", *args, "--otlp", receiver.url)
    assert result.returncode == 0, result.stderr
    ids = [s.span_id for s in receiver.spans]
    assert len(ids) == len(set(ids))  # each span once
    return set(ids), result.stderr


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_run_ids(harness_out, otlp_receiver, local_truth, jobs):
    spans, _ = local_truth
    results = summary(harness_out, "local")
    chosen = [results["retry"]["runId"], results["hook"]["runId"]]
    got, stderr = _export(
        otlp_receiver, "--dir", str(harness_out / "local-data"), "--jobs", jobs, "--run", chosen[0], "--run", chosen[1]
    )
    assert got == spans[chosen[0]] | spans[chosen[1]]
    assert "exported 2 runs" in stderr


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_workflow_and_status(harness_out, otlp_receiver, local_truth, jobs):
    spans, runs = local_truth
    data = str(harness_out / "local-data")
    sleep = summary(harness_out, "local")["sleep"]["runId"]
    got, _ = _export(otlp_receiver, "--dir", data, "--jobs", jobs, "--workflow", "sleepWorkflow")
    assert got == spans[sleep]
    failed = [r for r, run in runs.items() if run.status == "failed"]
    assert len(failed) == 2
    got, stderr = _export(
        otlp_receiver, "--dir", data, "--jobs", jobs, "--workflow", "workflows/demo.ts", "--status", "failed"
    )
    assert got == set().union(*(spans[r] for r in failed)) and "exported 2 runs" in stderr
    got, stderr = _export(otlp_receiver, "--dir", data, "--workflow", "noSuchWorkflow")
    assert got == set() and "exported 0 runs" in stderr


def test_time_window(harness_out, otlp_receiver, local_truth):
    spans, runs = local_truth
    created = sorted({run.created_at for run in runs.values()})
    since, until = created[3], created[-3]  # since inclusive, until exclusive, on createdAt
    inside = [r for r, run in runs.items() if since <= run.created_at < until]
    assert 0 < len(inside) < len(runs)
    got, _ = _export(
        otlp_receiver, "--dir", str(harness_out / "local-data"), "--since", _iso(since), "--until", _iso(until)
    )
    assert got == set().union(*(spans[r] for r in inside))
    epoch_ms = str(int(since.timestamp() * 1000))
    got, _ = _export(otlp_receiver, "--dir", str(harness_out / "local-data"), "--since", epoch_ms)
    assert got == set().union(*(spans[r] for r, run in runs.items() if run.created_at >= since))
    later = _iso(created[-1] + timedelta(milliseconds=1))
    got, stderr = _export(otlp_receiver, "--dir", str(harness_out / "local-data"), "--since", later)
    assert got == set() and "exported 0 runs" in stderr


def test_postgres_selection_in_worker_processes(harness_out, harness_pg_url, otlp_receiver):
    spans, runs = _spans_by_run(PostgresWorld(harness_pg_url))
    retry = summary(harness_out, "postgres")["retry"]["runId"]
    flags = ["--world", "postgres", "--url", harness_pg_url, "--jobs", "2"]
    got, _ = _export(otlp_receiver, *flags, "--workflow", "retryWorkflow")
    assert got == spans[retry]
    completed = [r for r, run in runs.items() if run.status == "completed"]
    got, stderr = _export(otlp_receiver, *flags, "--status", "completed")
    assert got == set().union(*(spans[r] for r in completed)) and f"exported {len(completed)} runs" in stderr
