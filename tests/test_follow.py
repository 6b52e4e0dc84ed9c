"""``wft follow`` against the real SDK app: fresh runs show up fast; kill -9 loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from telemetry.backends.local import LocalWorld
from telemetry.backends.postgres import PostgresWorld
from telemetry.follow import Checkpoint, Follower
from telemetry.reading import all_runs, run_trace

from .conftest import run_status, start_workflow


def _follower(data_dir: str, url: str, checkpoint: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "telemetry",
            "follow",
            "--world",
            "local",
            "--dir",
            data_dir,
            "--otlp",
            url,
            "--checkpoint",
            str(checkpoint),
            "--interval",
            "0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(predicate, timeout: float, step: float = 0.02) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError("timed out")


def _expected(data_dir: str) -> dict[str, object]:
    world = LocalWorld(data_dir)

    async def go():
        return {
            f"{s.context.span_id:016x}": s async for run in all_runs(world) for s in (await run_trace(world, run)).spans
        }

    return asyncio.run(go())


def _run_span(receiver, run_id):
    return [
        s
        for s in receiver.by_id().values()
        if s.name.startswith("run ") and s.attributes.get("workflow.run.id") == run_id
    ]


def test_follow_sees_a_new_run_within_a_second(live_local_app, otlp_receiver, tmp_path):
    follower = _follower(live_local_app["DATA_DIR"], otlp_receiver.url, tmp_path / "cp.json")
    try:
        time.sleep(1.0)  # the follower is up and idle
        run_id = start_workflow(live_local_app["URL"], "sequential", [5])
        _wait(lambda: run_status(live_local_app["URL"], run_id) == "completed", 30, 0.01)
        completed_at = time.monotonic()
        _wait(lambda: _run_span(otlp_receiver, run_id), 10)
        lag = time.monotonic() - completed_at
        assert lag < 1.0, f"run span arrived {lag:.2f}s after the run completed"
        steps = [
            s
            for s in otlp_receiver.by_id().values()
            if s.name.startswith("step ") and s.attributes["workflow.run.id"] == run_id
        ]
        assert len(steps) == 3
    finally:
        follower.terminate()
        assert follower.wait(10) == 0, follower.stderr.read()


def test_follow_survives_kill_9_with_no_gap_and_no_duplicate(live_local_app, otlp_receiver, tmp_path):
    checkpoint = tmp_path / "cp.json"
    url = live_local_app["URL"]
    follower = _follower(live_local_app["DATA_DIR"], otlp_receiver.url, checkpoint)
    runs = [
        start_workflow(url, "retry", ["k9"]),
        start_workflow(url, "sleep", []),
        start_workflow(url, "sequential", [1]),
    ]
    _wait(lambda: len(otlp_receiver.spans) >= 3, 20)
    os.kill(follower.pid, signal.SIGKILL)  # mid-stream: the retry and the sleep are still running
    follower.wait(10)
    sent_before = len(otlp_receiver.spans)
    runs.append(start_workflow(url, "parallel", [["x", "y"]]))  # a run that starts while we are down
    time.sleep(0.5)
    follower = _follower(live_local_app["DATA_DIR"], otlp_receiver.url, checkpoint)
    try:
        for run_id in runs:
            _wait(lambda: run_status(url, run_id) in ("completed", "failed"), 60, 0.05)
        _wait(lambda: all(_run_span(otlp_receiver, r) for r in runs), 10)
        time.sleep(0.5)
    finally:
        follower.terminate()
        follower.wait(10)
    expected = _expected(live_local_app["DATA_DIR"])
    ids = [s.span_id for s in otlp_receiver.spans]
    assert 0 < sent_before < len(ids)
    assert set(ids) == set(expected), "gap: spans missing after the restart"
    # At-least-once: the kill landed right after an acknowledged export, before its checkpoint
    # write, so that one batch may come again: with the same ids and the same content.
    first_seen: dict[str, object] = {}
    resent = 0
    for span in otlp_receiver.spans:
        key = (span.trace_id, span.name, span.parent_span_id, span.start, span.end, sorted(span.attributes.items()))
        if span.span_id in first_seen:
            resent += 1
            assert first_seen[span.span_id] == key, "a re-sent span id carried different content"
        else:
            first_seen[span.span_id] = key
    assert resent <= sent_before, "more re-sent than was in flight when killed"


def test_follower_on_postgres_sends_each_span_once(harness_pg_url, tmp_path):
    world = PostgresWorld(harness_pg_url)
    batches: list[list] = []

    async def go():
        follower = Follower(world, lambda run, events, spans: batches.append(spans), Checkpoint(tmp_path / "cp.json"))
        first = await follower.poll()
        second = await follower.poll()
        restarted = Follower(world, lambda run, events, spans: batches.append(spans), Checkpoint(tmp_path / "cp.json"))
        third = await restarted.poll()
        expected = [s async for run in all_runs(world) for s in (await run_trace(world, run)).spans]
        await world.close()
        return first, second, third, expected

    first, second, third, expected = asyncio.run(go())
    assert first == len(expected) > 0 and second == 0 and third == 0
    assert sorted(s.context.span_id for b in batches for s in b) == sorted(s.context.span_id for s in expected)


def test_checkpoint_keeps_finished_runs_small_and_bad_checkpoints_are_one_line(harness_out, tmp_path):
    import json

    world = LocalWorld(harness_out / "local-data")
    checkpoint = tmp_path / "cp.json"
    asyncio.run(Follower(world, lambda run, events, spans: None, Checkpoint(checkpoint)).poll())
    saved = json.loads(checkpoint.read_text())["runs"]
    assert len(saved) == 11 and all(v["complete"] and v["sent"] == [] and v["events"] > 0 for v in saved.values())
    checkpoint.write_text("{broken")
    from .conftest import wft

    result = wft(
        "follow",
        "--dir",
        str(harness_out / "local-data"),
        "--checkpoint",
        str(checkpoint),
        "--otlp",
        "http://127.0.0.1:9",
    )
    assert result.returncode == 2 and "not valid JSON" in result.stderr and "move it away" in result.stderr
