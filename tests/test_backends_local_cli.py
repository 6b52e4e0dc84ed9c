"""``wft export`` and ``wft runs`` (subprocesses) on copies of a real world-local dir holding a
cut record, a FIFO, or nothing wrong: what is skipped is named, nothing else is lost."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from ulid import ULID

from telemetry.backends.local import LocalWorld
from telemetry.reading import all_runs, run_trace

from .conftest import summary, wft


@pytest.fixture
def broken(harness_out, tmp_path):
    """A copy of the real world with one event record and one run record cut mid-JSON (old mtimes,
    as a copy keeps them), plus the names of the runs they belong to."""
    data = tmp_path / "data"
    shutil.copytree(harness_out / "local-data", data)
    results = summary(harness_out, "local")
    event_run, record_run = results["parallel"]["runId"], results["webhook"]["runId"]
    cut_event = sorted((data / "events").glob(f"{event_run}-*.json"))[2]
    cut_run = data / "runs" / f"{record_run}.json"
    for path in (cut_event, cut_run):
        stat = path.stat()
        path.write_bytes(path.read_bytes()[: stat.st_size // 2])
        os.utime(path, ns=(stat.st_mtime_ns, stat.st_mtime_ns))
    return data, {event_run: cut_event, record_run: cut_run}


def spans_of(data, skip: set[str]) -> dict[str, object]:
    world = LocalWorld(data)

    async def go():
        return {
            f"{s.context.span_id:016x}": s
            async for run in all_runs(world)
            if run.run_id not in skip
            for s in (await run_trace(world, run)).spans
        }

    return asyncio.run(go())


def test_export_skips_only_the_runs_with_cut_records_names_them_and_exits_1(broken, harness_out, otlp_receiver):
    data, cut = broken
    result = wft("export", "--dir", str(data), "--otlp", otlp_receiver.url)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("wft export: skipped 2 runs with unreadable records (first: run ")
    assert any(str(path) in last for path in cut.values())
    for path in cut.values():
        assert str(path) in result.stderr  # each named once, by the reader's warning
    assert "exported 9 runs" in result.stderr
    expected = spans_of(harness_out / "local-data", skip=set(cut))
    assert set(otlp_receiver.by_id()) == set(expected)  # every other run, complete and exact


def test_export_of_a_world_holding_a_fifo_finishes_and_names_it(harness_out, tmp_path, otlp_receiver):
    data = tmp_path / "data"
    shutil.copytree(harness_out / "local-data", data)
    run_id = summary(harness_out, "local")["sleep"]["runId"]
    fifo = data / "events" / f"{run_id}-evnt_{ULID()}.json"
    os.mkfifo(fifo)
    os.mkfifo(data / "runs" / "stray.json")
    os.mkfifo(data / "events" / "stray")
    result = wft("export", "--dir", str(data), "--otlp", otlp_receiver.url, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(fifo) in result.stderr.strip().splitlines()[-1] and "FIFO" in result.stderr
    assert str(data / "runs" / "stray.json") in result.stderr
    assert "exported 10 runs" in result.stderr


def test_runs_lists_runs_with_cut_records_marked(broken, harness_out):
    data, cut = broken
    table = wft("runs", "--dir", str(data))
    assert table.returncode == 0 and "Traceback" not in table.stderr
    rows = {line.split()[0]: line for line in table.stdout.strip().splitlines()[1:]}
    assert len(rows) == 11
    for run_id, line in rows.items():
        assert ("!" in line) == (run_id in cut), line
    for path in cut.values():
        assert str(path) in table.stderr
    ours = json.loads(wft("runs", "--dir", str(data), "--json").stdout)["data"]
    clean = json.loads(wft("runs", "--dir", str(harness_out / "local-data"), "--json").stdout)["data"]
    marked = {r["runId"]: r for r in ours if "problems" in r}
    assert set(marked) == set(cut)
    for run_id, path in cut.items():
        assert str(path) in marked[run_id]["problems"][0]
    assert [r for r in ours if r["runId"] not in cut] == [r for r in clean if r["runId"] not in cut]


def test_export_progress_on_a_terminal_and_only_a_summary_on_a_pipe(harness_out, otlp_receiver):
    data = str(harness_out / "local-data")
    piped = wft("export", "--dir", data, "--otlp", otlp_receiver.url)
    assert piped.returncode == 0 and "\r" not in piped.stderr
    assert piped.stderr.strip().splitlines()[-1].startswith("exported 11 runs")
    leader, follower = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "telemetry", "export", "--dir", data, "--otlp", otlp_receiver.url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=120) == 0
    os.close(leader)
    text = output.decode()
    assert "\r" in text and "/11 runs" in text and "events/s" in text and "ETA" in text
    assert "exported 11 runs" in text


def test_export_waits_for_a_record_being_written(harness_out, tmp_path, otlp_receiver):
    """A record cut a moment ago (fresh mtime: a copy in progress) is read again until it is
    whole; one that stays cut is skipped once its grace period is over."""
    data = tmp_path / "data"
    shutil.copytree(harness_out / "local-data", data)
    run_id = summary(harness_out, "local")["retry"]["runId"]
    cut = sorted((data / "events").glob(f"{run_id}-*.json"))[1]
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    export = subprocess.Popen(
        [sys.executable, "-m", "telemetry", "export", "--dir", str(data), "--otlp", otlp_receiver.url],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(5)
    assert export.poll() is None  # waiting for the record, not done with a partial run
    cut.write_bytes(whole)
    assert export.wait(timeout=60) == 0, export.stderr.read() if export.stderr else ""
    assert set(otlp_receiver.by_id()) == set(spans_of(harness_out / "local-data", skip=set()))

    cut.write_bytes(whole[: len(whole) // 2])
    started = time.monotonic()
    result = wft("export", "--dir", str(data), "--otlp", otlp_receiver.url, "--grace", "1")
    assert result.returncode == 1 and time.monotonic() - started < 30
    assert str(cut) in result.stderr.strip().splitlines()[-1]


def test_a_mixed_layout_dir_is_a_one_line_error(harness_out, tmp_path):
    """Flat event files beside per-run folders: the SDK refuses such a directory, and so do we."""
    data = tmp_path / "data"
    shutil.copytree(harness_out / "local-data", data)
    (data / "events" / f"wrun_{ULID()}").mkdir()
    for command in (["export", "--otlp", "http://127.0.0.1:9"], ["runs"]):
        result = wft(*command, "--dir", str(data))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "mixes the flat (4.x) and per-run world-local layouts" in line
