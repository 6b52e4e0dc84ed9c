"""``telemetry.follow`` and ``wft follow`` on real SDK data: the incremental builder gives the
one-shot spans, a pass costs what changed, the SQLite checkpoint (and its migration from JSON),
kill -9, unreadable runs, and the daemon's retries against a collector that is down."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from telemetry.backends.local import LocalWorld
from telemetry.backends.postgres import PostgresWorld
from telemetry.follow import Checkpoint, Follower
from telemetry.reading import all_runs, event_log, run_trace
from telemetry.runtrace import RunTraceBuilder, build_run_trace

from .conftest import run_status, start_workflow, wft
from .otlp_receiver import decode_request
from .pgserver import free_port


def _follower(data_dir: str, url: str, checkpoint: Path, *extra: str) -> subprocess.Popen:
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
            *extra,
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


def _expected(data_dir: str | Path) -> dict[str, object]:
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


def _sid(span) -> str:
    return f"{span.context.span_id:016x}"


# -- the incremental builder ---------------------------------------------------------------------
def _encoded(spans) -> list[bytes]:
    return sorted(encode_spans([s]).SerializeToString() for s in spans)


@pytest.mark.parametrize("snapshot", ["local-data", "local-data-midrun"])
def test_builder_fed_event_by_event_gives_the_one_shot_spans(harness_out, snapshot):
    world = LocalWorld(harness_out / snapshot)

    async def logs():
        return [(run, await event_log(world, run.run_id)) async for run in all_runs(world)]

    compared = 0
    for run, events in asyncio.run(logs()):
        builder = RunTraceBuilder(run.run_id, run)
        sent: set[str] = set()
        for n, event in enumerate(events, 1):
            before = len(builder.closed)
            builder.feed([event])
            one_shot = build_run_trace(run.run_id, events[:n], run)
            # non-destructive: asking twice, at any point, gives the one-shot build of the events so far
            assert _encoded(builder.trace().spans) == _encoded(one_shot.spans) == _encoded(builder.trace().spans)
            if not builder.complete:
                sent |= {_sid(s) for s in builder.spans(builder.closed[before:])}
            compared += 1
        assert builder.events == len(events) and builder.last_event_id == max(e.event_id for e in events)
        # what closed along the way plus the end's trace is exactly the one-shot span set
        assert sent <= {_sid(s) for s in builder.trace().spans}
    # every event of the snapshot was fed and compared (how many depends on when the harness took it)
    assert compared == len(list((harness_out / snapshot / "events").rglob("*.json"))) > 50


# -- a pass costs what changed -------------------------------------------------------------------
def _reveal(source: Path, target: Path, names: list[str]) -> None:
    for name in names:
        shutil.copy2(source / "events" / name, target / "events" / name)


def _skeleton(source: Path, target: Path) -> list[str]:
    """``target``: ``source`` without its event files (returned in id order, to be revealed)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.json"))
    for sub in ("runs", "steps"):
        for path in (source / sub).glob("*.json"):
            shutil.copy2(path, target / sub / path.name)
    return sorted(p.name for p in (source / "events").glob("*.json"))


def test_a_long_live_run_is_read_once_not_per_change(tmp_path, harness_out):
    from bench.synth import long_run

    full = tmp_path / "full"
    (run_id,) = long_run(harness_out / "local-data", full, 2000)
    live = tmp_path / "live"
    names = _skeleton(full, live)
    world = LocalWorld(live)
    sent: list[str] = []
    follower = Follower(world, lambda run, events, spans: sent.extend(_sid(s) for s in spans), Checkpoint(None))

    async def go():
        changes = 0
        for start in range(0, len(names), 150):  # the run grows while it is followed
            _reveal(full, live, names[start : start + 150])
            await follower.poll()
            changes += 1
        return changes

    changes = asyncio.run(go())
    assert changes > 30
    # each event read about once: re-reading the run per change would read it ~changes/2 times over
    assert len(names) <= follower.events_read < 1.5 * len(names)
    assert follower.rebuilds == 0
    expected = _expected(full)
    assert Counter(sent) == Counter(expected.keys()), "spans missing or sent twice"


def test_a_first_pass_over_many_runs_reads_run_records_by_page(tmp_path, harness_out):
    from bench.synth import scale_local

    world_dir = tmp_path / "world"
    scale_local(harness_out / "local-data", world_dir, 260)
    world = LocalWorld(world_dir)
    gets = Counter()
    original = world.runs.get

    async def counted_get(run_id, **kwargs):
        gets[run_id] += 1
        return await original(run_id, **kwargs)

    world.runs.get = counted_get
    sent: list[str] = []
    follower = Follower(world, lambda run, events, spans: sent.extend(_sid(s) for s in spans), Checkpoint(None))
    asyncio.run(follower.poll())
    assert sum(gets.values()) == 0  # 260 runs: listed a page at a time, not read one by one
    assert Counter(sent) == Counter(_expected(world_dir).keys())


def test_an_event_that_lands_late_rebuilds_the_run_in_id_order(tmp_path, harness_out):
    source = harness_out / "local-data"
    live = tmp_path / "live"
    names = _skeleton(source, live)
    by_run: dict[str, list[str]] = {}
    for name in names:
        by_run.setdefault(name.split("-", 1)[0], []).append(name)
    run_id, run_names = max(by_run.items(), key=lambda item: len(item[1]))
    held = run_names[-4]  # written after the events that follow it in id order
    world = LocalWorld(live)
    sent: list[str] = []
    events: list[str] = []

    def deliver(run, new_events, spans):
        sent.extend(_sid(s) for s in spans)
        events.extend(e.event_id for e in new_events if e.run_id == run_id)

    follower = Follower(world, deliver, Checkpoint(None), lookback=60.0)

    async def go():
        _reveal(source, live, [n for n in names if n != held and n not in run_names[-3:]])
        await follower.poll()
        _reveal(source, live, run_names[-3:-1])  # later ids first…
        await follower.poll()
        _reveal(source, live, [held])  # …then the one minted before them
        await follower.poll()
        _reveal(source, live, run_names[-1:])
        await follower.poll()

    asyncio.run(go())
    assert follower.rebuilds == 1
    assert Counter(events) == Counter(n.split("-", 1)[1].removesuffix(".json") for n in run_names)
    assert set(sent) == set(_expected(source))


def test_an_unreadable_event_marks_its_run_and_every_other_run_goes_on(tmp_path, harness_out, caplog):
    data = tmp_path / "world"
    shutil.copytree(harness_out / "local-data", data)
    victim = sorted((data / "events").glob("*.json"))[7]
    victim.write_bytes(victim.read_bytes()[:20])  # truncated for good: older than the grace period
    old = time.time() - 3600
    os.utime(victim, (old, old))
    run_id = victim.name.split("-", 1)[0]
    sent: list[str] = []
    follower = Follower(LocalWorld(data), lambda r, e, spans: sent.extend(_sid(s) for s in spans), Checkpoint(None))
    caplog.set_level("WARNING", logger="telemetry.follow")
    asyncio.run(follower.poll())
    asyncio.run(follower.poll())
    assert list(follower.problems) == [run_id] and str(victim) in follower.problems[run_id]
    expected = {
        k: v for k, v in _expected(harness_out / "local-data").items() if v.attributes["workflow.run.id"] != run_id
    }
    assert set(sent) == set(expected) and len(sent) == len(expected)
    lines = [r.getMessage() for r in caplog.records if r.name == "telemetry.follow"]
    assert len(lines) == 1 and str(victim) in lines[0]  # once, with its path, not once per pass


# -- the checkpoint ------------------------------------------------------------------------------
def test_checkpoint_keeps_finished_runs_small_and_bad_checkpoints_are_one_line(harness_out, tmp_path):
    world = LocalWorld(harness_out / "local-data")
    path = tmp_path / "cp.sqlite3"
    asyncio.run(Follower(world, lambda run, events, spans: None, Checkpoint(path)).poll())
    checkpoint = Checkpoint(path)
    saved = checkpoint.runs()
    assert len(saved) == 11 and all(v.complete and v.events > 0 and v.last_id for v in saved.values())
    assert all(checkpoint.sent(r) == set() for r in saved)  # a finished run keeps no span ids
    assert checkpoint.token is not None
    assert path.stat().st_mode & 0o077 == 0  # not readable by others
    checkpoint.close()
    for content in (b"{broken", b"\x00\x01garbage that is neither SQLite nor JSON"):
        path.write_bytes(content)
        result = wft(
            "follow",
            "--dir",
            str(harness_out / "local-data"),
            "--checkpoint",
            str(path),
            "--otlp",
            "http://127.0.0.1:9",
        )
        assert result.returncode == 2 and "move it away" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def _v1_checkpoint(world_dir: Path) -> dict:
    """What the follower of the previous version wrote after following ``world_dir``."""
    world = LocalWorld(world_dir)

    async def go():
        runs = {}
        async for run in all_runs(world):
            events = await event_log(world, run.run_id)
            trace = build_run_trace(run.run_id, events, run)
            sent = [] if trace.complete else sorted(_sid(s) for s in trace.spans)
            runs[run.run_id] = {"events": len(events), "sent": sent, "complete": trace.complete}
        return {"version": 1, "runs": runs}

    return asyncio.run(go())


def test_a_json_checkpoint_is_migrated_and_nothing_sent_is_sent_again(harness_out, tmp_path, caplog):
    """Followed up to the mid-run snapshot with the old JSON checkpoint, then on to the end."""
    v1 = _v1_checkpoint(harness_out / "local-data-midrun")
    unfinished = [r for r, s in v1["runs"].items() if not s["complete"]]
    assert unfinished and any(s["sent"] for s in v1["runs"].values())
    path = tmp_path / "cp.json"
    path.write_text(json.dumps(v1))
    caplog.set_level("INFO", logger="telemetry.follow")
    sent: list[str] = []
    follower = Follower(
        LocalWorld(harness_out / "local-data"),
        lambda r, e, spans: sent.extend(_sid(s) for s in spans),
        Checkpoint(path),
    )
    asyncio.run(follower.poll())
    assert path.read_bytes().startswith(b"SQLite format 3\x00")  # migrated in place
    assert any("migrated 11 runs" in r.getMessage() for r in caplog.records)
    already = {s for state in v1["runs"].values() for s in state["sent"]}
    final = _expected(harness_out / "local-data")
    done_at_midrun = {r for r, s in v1["runs"].items() if s["complete"]}
    owed = {k for k, v in final.items() if v.attributes["workflow.run.id"] not in done_at_midrun} - already
    assert Counter(sent) == Counter(owed)
    # a second open is the SQLite file itself, and the state carried over
    again = Checkpoint(path)
    assert set(again.runs()) == set(v1["runs"]) and all(s.complete for s in again.runs().values())

    # the CLI's default name: the old default file is imported beside it and set aside
    legacy = tmp_path / "old.json"
    legacy.write_text(json.dumps(v1))
    migrated = Checkpoint(tmp_path / "new.sqlite3", legacy=legacy)
    assert not legacy.exists() and (tmp_path / "old.json.migrated").exists()
    assert set(migrated.runs()) == set(v1["runs"])
    assert {s for r in unfinished for s in migrated.sent(r)} == {s for r in unfinished for s in v1["runs"][r]["sent"]}


def test_a_sqlite_checkpoint_under_the_old_name_is_adopted(harness_out, tmp_path):
    old = tmp_path / "store.sqlite3.follow.json"
    first = Checkpoint(old)  # SQLite written where the JSON used to be
    asyncio.run(Follower(LocalWorld(harness_out / "local-data"), lambda *a: None, first).poll())
    first.close()
    adopted = Checkpoint(tmp_path / "store.sqlite3.follow.sqlite3", legacy=old)
    assert len(adopted.runs()) == 11 and adopted.token is not None and not old.exists()


def test_checkpoint_writes_only_what_changed(tmp_path):
    """A save is one small transaction: the file does not get rewritten per change."""
    path = tmp_path / "cp.sqlite3"
    checkpoint = Checkpoint(path)
    from telemetry.follow import RunState

    for i in range(2000):
        checkpoint.record(f"wrun_{i:06d}", RunState(3, f"evnt_{i:06d}", True))
    checkpoint.advance("t1")
    size = path.stat().st_size + Path(str(path) + "-wal").stat().st_size
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = Path(str(path) + "-wal").stat().st_size
    checkpoint.record("wrun_000007", RunState(5, "evnt_x", False), ["00000000000000aa"])
    grown = Path(str(path) + "-wal").stat().st_size - before
    assert 0 < grown < size / 4  # a few pages, not a copy of every run's state
    assert checkpoint.get("wrun_000007").events == 5 and checkpoint.sent("wrun_000007") == {"00000000000000aa"}


def test_checkpoint_tells_which_runs_it_knows_many_at_a_time(tmp_path):
    """``known``: the runs of a list the checkpoint holds (finished or not), across its query chunks."""
    from telemetry.follow import RunState

    checkpoint = Checkpoint(tmp_path / "cp.sqlite3")
    held = {f"wrun_{i:06d}" for i in range(0, 1500, 7)}
    for run_id in sorted(held):
        checkpoint.record(run_id, RunState(1, "evnt_1", run_id.endswith("0")))
    asked = [f"wrun_{i:06d}" for i in range(1200)] + ["wrun_x'); DROP TABLE runs; --"]
    assert checkpoint.known(asked) == held & set(asked)
    assert checkpoint.known([]) == set() and len(checkpoint.runs()) == len(held)


# -- live, with kill -9 ------------------------------------------------------------------------
def test_follow_sees_a_new_run_within_a_second(live_local_app, otlp_receiver, tmp_path):
    follower = _follower(live_local_app["DATA_DIR"], otlp_receiver.url, tmp_path / "cp.sqlite3")
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
    checkpoint = tmp_path / "cp.sqlite3"
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
            _wait(lambda run_id=run_id: run_status(url, run_id) in ("completed", "failed"), 60, 0.05)
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
        attributes = sorted(span.attributes.items())
        key = (span.trace_id, span.name, span.parent_span_id, span.start, span.end, attributes)
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
        follower = Follower(
            world, lambda run, events, spans: batches.append(spans), Checkpoint(tmp_path / "cp.sqlite3")
        )
        first = await follower.poll()
        second = await follower.poll()
        restarted = Follower(
            world, lambda run, events, spans: batches.append(spans), Checkpoint(tmp_path / "cp.sqlite3")
        )
        third = await restarted.poll()
        expected = [s async for run in all_runs(world) for s in (await run_trace(world, run)).spans]
        await world.close()
        return first, second, third, expected

    first, second, third, expected = asyncio.run(go())
    assert first == len(expected) > 0 and second == 0 and third == 0
    assert sorted(s.context.span_id for b in batches for s in b) == sorted(s.context.span_id for s in expected)


def test_a_pass_holds_a_bounded_number_of_events_and_reads_the_rest_one_by_one(harness_pg_url, monkeypatch):
    """A chunk's prefetch stops once it holds ``PREFETCH_EVENTS`` events (a chunk of 100 runs of
    10^4 steps held whole is gigabytes): the chunk's other runs are read on their own, and every
    span still goes out once."""
    from telemetry import follow

    monkeypatch.setattr(follow, "PREFETCH_EVENTS", 1)
    world = PostgresWorld(harness_pg_url)
    batches: list[list] = []
    alone: list[str] = []
    real_list = world.events.list

    async def counted_list(*, run_id: str, **options):
        alone.append(run_id)
        return await real_list(run_id=run_id, **options)

    async def go():
        expected = [s async for run in all_runs(world) for s in (await run_trace(world, run)).spans]
        runs = {run.run_id async for run in all_runs(world)}
        world.events.list = counted_list  # the reads of one run's log, counted
        follower = Follower(world, lambda run, events, spans: batches.append(spans), Checkpoint(None))
        sent = await follower.poll()
        await world.close()
        return runs, expected, sent

    runs, expected, sent = asyncio.run(go())
    assert sent == len(expected) and len(runs) > 2
    assert sorted(s.context.span_id for b in batches for s in b) == sorted(s.context.span_id for s in expected)
    assert len(set(alone)) == len(runs) - 1  # one run came with the prefetch, which then stopped


# -- the daemon ----------------------------------------------------------------------------------
class _Lines:
    """A subprocess's stderr, collected line by line as it comes."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


def _receiver_on(port: int, answer_503: list[int]):
    """An OTLP/HTTP receiver on a given port; answers 503 while ``answer_503[0] > 0``."""
    received: list = []

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if answer_503[0] > 0:
            answer_503[0] -= 1
            return web.Response(status=503)
        received.extend(decode_request(body))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return received, stop


def test_daemon_rides_out_a_collector_that_is_down_then_up(harness_out, tmp_path):
    port = free_port()
    checkpoint = tmp_path / "cp.sqlite3"
    follower = _follower(
        str(harness_out / "local-data"),
        f"http://127.0.0.1:{port}",
        checkpoint,
        "--timeout",
        "1",
        "--max-backoff",
        "0.5",
    )
    lines = _Lines(follower.stderr)
    stop = None
    try:
        _wait(lambda: lines.having("unavailable"), 30)
        time.sleep(2.0)  # several retries while down…
        assert Checkpoint(checkpoint).runs() == {}  # …and nothing checkpointed that was not acknowledged
        answer_503 = [3]
        received, stop = _receiver_on(port, answer_503)  # up, answering 503 for a while, then 200
        expected = _expected(harness_out / "local-data")
        _wait(lambda: len({s.span_id for s in received}) >= len(expected), 30)
        _wait(lambda: lines.having("resumed"), 10)
        assert answer_503[0] == 0
    finally:
        follower.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = follower.wait(10)
        took = time.monotonic() - started
        if stop:
            stop()
    assert code == 0 and took < 2.0
    assert {s.span_id for s in received} == set(expected)
    assert len(lines.having("unavailable")) == 1, lines.lines  # one line per state change, not per retry
    assert len(lines.having("resumed")) == 1 and not lines.having("Traceback") and not lines.having("Transient")
    assert len(Checkpoint(checkpoint).runs()) == 11


def test_daemon_stops_within_two_seconds_while_the_collector_is_unreachable(harness_out, tmp_path):
    # a blackholed address: connecting hangs until the (long) request timeout
    follower = _follower(
        str(harness_out / "local-data"), "http://10.255.255.1:4318", tmp_path / "cp.sqlite3", "--timeout", "30"
    )
    lines = _Lines(follower.stderr)
    time.sleep(2.0)  # the first send is in flight
    follower.send_signal(signal.SIGINT)
    started = time.monotonic()
    code = follower.wait(10)
    assert time.monotonic() - started < 2.0 and code == 0
    assert not lines.having("Traceback")


def test_once_is_one_pass_with_a_one_line_error_or_a_summary(harness_out, otlp_receiver, tmp_path):
    down = wft(
        "follow",
        "--once",
        "--dir",
        str(harness_out / "local-data"),
        "--checkpoint",
        str(tmp_path / "a.sqlite3"),
        "--otlp",
        f"http://127.0.0.1:{free_port()}",
        "--timeout",
        "1",
    )
    assert down.returncode == 1 and down.stderr.strip().count("\n") == 0, down.stderr
    assert "unavailable" in down.stderr and "Traceback" not in down.stderr
    up = wft(
        "follow",
        "--once",
        "--dir",
        str(harness_out / "local-data"),
        "--checkpoint",
        str(tmp_path / "b.sqlite3"),
        "--otlp",
        otlp_receiver.url,
    )
    assert up.returncode == 0, up.stderr
    assert "first pass done" in up.stderr and "\r" not in up.stderr  # not a terminal: a summary only
    assert {s.span_id for s in otlp_receiver.spans} == set(_expected(harness_out / "local-data"))
    # a second cron run: nothing new to send
    again = wft(
        "follow",
        "--once",
        "--dir",
        str(harness_out / "local-data"),
        "--checkpoint",
        str(tmp_path / "b.sqlite3"),
        "--otlp",
        otlp_receiver.url,
    )
    assert again.returncode == 0 and len(otlp_receiver.spans) == len(set(_expected(harness_out / "local-data")))


def test_first_pass_shows_progress_on_a_terminal(harness_out, otlp_receiver, tmp_path):
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "telemetry",
            "follow",
            "--once",
            "--dir",
            str(harness_out / "local-data"),
            "--checkpoint",
            str(tmp_path / "cp.sqlite3"),
            "--otlp",
            otlp_receiver.url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed: the process exited
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(30) == 0
    text = output.decode()
    assert "\rfollow: 11/11 runs" in text and "events/s" in text and "ETA" in text
    assert "first pass done" in text


def test_daemon_with_the_world_down_says_so_once_and_stops_cleanly(tmp_path, otlp_receiver):
    url = f"postgres://world:s3cret@127.0.0.1:{free_port()}/world"  # nothing listens there
    process = subprocess.Popen(
        [sys.executable, "-m", "telemetry", "follow", "--world", "postgres", "--url", url]
        + ["--otlp", otlp_receiver.url, "--checkpoint", str(tmp_path / "cp.sqlite3"), "--max-backoff", "0.3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = _Lines(process.stderr)
    _wait(lambda: lines.having("world unavailable"), 20)
    time.sleep(2.0)  # many retries at most 0.3 s apart
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert process.wait(10) == 0 and time.monotonic() - started < 2.0
    assert len(lines.having("world unavailable")) == 1, lines.lines
    assert not lines.having("s3cret") and not lines.having("Traceback") and not lines.having("retrying in")
    once = wft(
        "follow",
        "--once",
        "--world",
        "postgres",
        "--url",
        url,
        "--otlp",
        otlp_receiver.url,
        "--checkpoint",
        str(tmp_path / "cp.sqlite3"),
    )
    assert once.returncode == 1 and "unreachable" in once.stderr and "s3cret" not in once.stderr
    assert len(once.stderr.strip().splitlines()) == 1, once.stderr


# -- batched delivery and the parallel first pass ------------------------------------------------
def _ids(spans) -> list[str]:
    return [f"{s.span_id:016x}" for s in spans]


def test_batched_delivery_checkpoints_only_acknowledged_batches(harness_out, tmp_path):
    """``deliver_many``: many runs per call and one checkpoint transaction per acknowledged batch; a
    batch that fails leaves no trace in the checkpoint, and a restart sends exactly the rest."""
    world_dir = harness_out / "local-data"
    path = tmp_path / "cp.sqlite3"
    acknowledged: list[list] = []  # the runs of each acknowledged batch, with their spans
    calls = [0]

    def failing_third(batch):
        calls[0] += 1
        if calls[0] == 3:
            raise ConnectionError("collector went away")
        acknowledged.append(batch)

    follower = Follower(
        LocalWorld(world_dir), None, Checkpoint(path), span_data=True, deliver_many=failing_third, batch_spans=12
    )
    with pytest.raises(ConnectionError):
        asyncio.run(follower.poll())
    recorded = Checkpoint(path).runs()
    delivered_runs = {d.run.run_id for batch in acknowledged for d in batch}
    assert len(acknowledged) == 2 and sum(len(b) for b in acknowledged) >= 3  # several runs per call
    assert set(recorded) == delivered_runs  # the checkpoint holds exactly what was acknowledged

    def working(batch):
        acknowledged.append(batch)

    restarted = Follower(
        LocalWorld(world_dir), None, Checkpoint(path), span_data=True, deliver_many=working, batch_spans=12
    )
    asyncio.run(restarted.poll())
    sent = [i for batch in acknowledged for d in batch for i in _ids(d.spans)]
    expected = _expected(world_dir)
    assert Counter(sent) == Counter(expected.keys()), "spans missing or sent twice"
    assert len(Checkpoint(path).runs()) == 11 and all(s.complete for s in Checkpoint(path).runs().values())


def test_a_run_that_fails_the_pass_does_not_hold_back_the_batch_before_it(harness_out, tmp_path):
    """A world error on one run fails the pass (to be retried), but the runs read before it are
    delivered and checkpointed, as they were when each run went out alone."""
    from telemetry.errors import WorkflowWorldError

    world = LocalWorld(harness_out / "local-data")
    runs = sorted(p.stem for p in (harness_out / "local-data" / "runs").glob("*.json"))
    original = world.runs.get

    async def get(run_id, **kwargs):
        if run_id == runs[-1]:
            raise WorkflowWorldError("the world went away")
        return await original(run_id, **kwargs)

    world.runs.get = get
    sent: list[str] = []
    path = tmp_path / "cp.sqlite3"
    follower = Follower(
        world,
        None,
        Checkpoint(path),
        span_data=True,
        deliver_many=lambda b: sent.extend(i for d in b for i in _ids(d.spans)),
    )
    with pytest.raises(WorkflowWorldError):
        asyncio.run(follower.poll())
    expected = {
        i for i, s in _expected(harness_out / "local-data").items() if s.attributes["workflow.run.id"] != runs[-1]
    }
    assert set(sent) == expected and len(sent) == len(expected)
    assert set(Checkpoint(path).runs()) == set(runs[:-1])


def _catch_up_collector(gzipped: bool = True):
    """A ``post`` for ``ParallelCatchUp`` that decodes what it is given, like a collector would:
    bodies gzipped, or plain (``gzip_bodies=False``, for a sink that compresses them itself)."""
    import gzip

    received: list = []

    async def post(body: bytes, spans: int) -> None:
        assert body.startswith(b"\x1f\x8b") is gzipped  # the gzip magic, or a protobuf message
        decoded = decode_request(gzip.decompress(body) if gzipped else body)
        assert len(decoded) == spans
        received.extend(decoded)

    return received, post


def _small_chunks(monkeypatch) -> None:
    """Chunks of three runs: the harness's 11 runs go out in several, to both workers."""
    from telemetry import chunking

    monkeypatch.setattr(chunking, "CHUNK_RUNS", 3)
    monkeypatch.setattr(chunking, "CHUNK_RUNS_MAX", 3)


@pytest.mark.parametrize("gzip_bodies", [True, False])
def test_a_parallel_first_pass_sends_what_export_sends_and_follows_the_unfinished_runs(
    harness_out, tmp_path, monkeypatch, gzip_bodies
):
    """The first pass over a history hands the finished runs to worker processes; the unfinished
    ones stay with the follower, which sends the rest as they finish: overall exactly the spans of
    an export of the final world, none twice (mid-run snapshot, then the final one, of the real SDK).
    Bodies come gzipped or not, as the sink takes them (OTLP/gRPC compresses the call itself)."""
    from telemetry.backends import BackendConfig
    from telemetry.follow import ParallelCatchUp

    _small_chunks(monkeypatch)
    world_dir = tmp_path / "world"
    shutil.copytree(harness_out / "local-data-midrun", world_dir)
    received, post = _catch_up_collector(gzip_bodies)
    delivered: list = []
    checkpoint = Checkpoint(tmp_path / "cp.sqlite3")
    config = BackendConfig("local", data_dir=str(world_dir))
    catch_up = ParallelCatchUp(config, post, jobs=2, min_runs=5, gzip_bodies=gzip_bodies)
    follower = Follower(
        LocalWorld(world_dir),
        None,
        checkpoint,
        span_data=True,
        deliver_many=lambda batch: delivered.extend(i for d in batch for i in _ids(d.spans)),
        catch_up=catch_up,
    )
    asyncio.run(follower.poll())
    midrun = _expected(harness_out / "local-data-midrun")
    by_workers = {s.span_id for s in received}
    assert by_workers and delivered  # finished runs went to the workers, unfinished ones stayed here
    assert Counter([s.span_id for s in received] + delivered) == Counter(midrun.keys())
    unfinished = set(follower.following)
    assert unfinished and not unfinished & {s.attributes["workflow.run.id"] for s in received}
    states = checkpoint.runs()
    assert {r for r, s in states.items() if s.complete} == {s.attributes["workflow.run.id"] for s in received}

    shutil.copytree(harness_out / "local-data", world_dir, dirs_exist_ok=True)  # the runs go on and finish
    for _ in range(3):
        asyncio.run(follower.poll())
    final = _expected(harness_out / "local-data")
    assert Counter([s.span_id for s in received] + delivered) == Counter(final.keys()), "missing or twice"
    assert not follower.following and all(s.complete for s in checkpoint.runs().values())


def test_a_parallel_first_pass_leaves_a_run_whose_record_cannot_be_read_to_the_follower(
    harness_out, tmp_path, monkeypatch
):
    """The workers read the runs' records (the follower hands out ids); one cut mid-write goes back
    to the follower, which retries it on later passes, and every other run is sent and recorded."""
    from telemetry.backends import BackendConfig
    from telemetry.follow import ParallelCatchUp

    _small_chunks(monkeypatch)
    world_dir = tmp_path / "world"
    shutil.copytree(harness_out / "local-data", world_dir)
    cut = sorted((world_dir / "runs").glob("*.json"))[3]
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])  # as if being written
    received, post = _catch_up_collector()
    checkpoint = Checkpoint(tmp_path / "cp.sqlite3")
    catch_up = ParallelCatchUp(BackendConfig("local", data_dir=str(world_dir)), post, jobs=2, min_runs=5)
    delivered: list = []
    follower = Follower(
        LocalWorld(world_dir),
        None,
        checkpoint,
        span_data=True,
        deliver_many=lambda batch: delivered.extend(i for d in batch for i in _ids(d.spans)),
        catch_up=catch_up,
    )
    asyncio.run(follower.poll())
    assert not delivered  # the cut run is not readable yet: nothing of it is sent
    expected = _expected(world_dir)
    run_of = {i: s.attributes["workflow.run.id"] for i, s in expected.items()}
    assert cut.stem not in {s.attributes["workflow.run.id"] for s in received}
    assert {s.span_id for s in received} == {i for i, r in run_of.items() if r != cut.stem}
    done = {r for r, state in checkpoint.runs().items() if state.complete}
    assert done == set(run_of.values()) - {cut.stem}  # the cut run is to do again, not done
    cut.write_bytes(whole)  # written in full: the next pass sends it
    asyncio.run(follower.poll())
    assert set(delivered) == {i for i, r in run_of.items() if r == cut.stem}
    assert checkpoint.get(cut.stem) is not None and checkpoint.get(cut.stem).complete


def _parallel_first_pass(world_dir: Path, tmp_path: Path, monkeypatch) -> tuple[list, list[int], Checkpoint]:
    """One first pass of a follower over ``world_dir`` with a parallel catch-up on two workers:
    (the spans the workers sent, the size of every chunk handed to them, the checkpoint)."""
    from telemetry import follow
    from telemetry.backends import BackendConfig

    tasks: list[int] = []

    class Counting(follow.ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            tasks.append(len(args[0]))
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(follow, "ProcessPoolExecutor", Counting)
    received, post = _catch_up_collector()
    checkpoint = Checkpoint(tmp_path / "cp.sqlite3")
    catch_up = follow.ParallelCatchUp(BackendConfig("local", data_dir=str(world_dir)), post, jobs=2, min_runs=5)
    delivered: list = []  # the runs the follower reads itself (none of these worlds has one unfinished)
    follower = Follower(
        LocalWorld(world_dir), None, checkpoint, span_data=True, deliver_many=delivered.extend, catch_up=catch_up
    )
    asyncio.run(follower.poll())
    assert not delivered
    return received, tasks, checkpoint


def test_a_parallel_first_pass_hands_out_chunks_sized_as_export_sizes_its_tasks(harness_out, tmp_path, monkeypatch):
    """Big chunks while many runs are left, small ones at the end (``chunking.chunk_size``, as
    ``wft export`` does): with a fixed 64 runs a chunk the catch-up fell behind an export of the
    same world (0.88x at 10^6 events). Every span is still sent once and every run recorded."""
    from bench.synth import scale_local
    from telemetry import chunking

    runs = 300
    monkeypatch.setattr(chunking, "CHUNK_RUNS_MAX", 64)  # a big world, to scale: 300 runs
    world_dir = tmp_path / "world"
    scale_local(harness_out / "local-data", world_dir, runs)
    received, tasks, checkpoint = _parallel_first_pass(world_dir, tmp_path, monkeypatch)
    sizes, left = [], runs
    while left:
        sizes.append(min(left, chunking.chunk_size(left, 2)))
        left -= sizes[-1]
    assert tasks == sizes and tasks[0] == 64 and tasks[-1] <= chunking.CHUNK_RUNS
    expected = _expected(world_dir)
    assert Counter(s.span_id for s in received) == Counter(expected.keys())
    assert sum(state.complete for state in checkpoint.runs().values()) == runs


def test_a_parallel_first_pass_chunk_of_many_spans_answers_early(harness_out, tmp_path, monkeypatch):
    """A worker answers once a chunk's spans reach ``CHUNK_SPANS`` and hands back the runs it did not
    reach, which go out again: a chunk of long runs never holds them all at once, and each span is
    sent once."""
    from telemetry import chunking

    monkeypatch.setattr(chunking, "CHUNK_SPANS", 1)  # every chunk answers after its first run
    world_dir = tmp_path / "world"
    shutil.copytree(harness_out / "local-data", world_dir)
    received, tasks, checkpoint = _parallel_first_pass(world_dir, tmp_path, monkeypatch)
    by_workers = {s.attributes["workflow.run.id"] for s in received}
    assert tasks[0] == len(list((world_dir / "runs").glob("*.json")))  # one chunk held every run
    assert len(tasks) == len(by_workers) > 1  # each chunk answered after one run; the rest went out again
    assert tasks == sorted(set(tasks), reverse=True)
    assert all(checkpoint.runs()[run_id].complete for run_id in by_workers)
    expected = _expected(world_dir)
    assert Counter(s.span_id for s in received) == Counter(expected.keys())


def test_a_parallel_first_pass_checkpoints_only_what_was_acknowledged(harness_out, tmp_path, monkeypatch):
    from telemetry import chunking
    from telemetry.backends import BackendConfig
    from telemetry.follow import ParallelCatchUp

    monkeypatch.setattr(chunking, "CHUNK_RUNS", 2)  # chunks of two runs: a request per chunk
    monkeypatch.setattr(chunking, "CHUNK_RUNS_MAX", 2)
    world_dir = harness_out / "local-data"
    received, post = _catch_up_collector()
    posts = [0]

    async def failing_second(body: bytes, spans: int) -> None:
        posts[0] += 1
        if posts[0] == 2:
            raise ConnectionError("collector went away")
        await post(body, spans)

    path = tmp_path / "cp.sqlite3"

    def follower(post_fn) -> Follower:
        config = BackendConfig("local", data_dir=str(world_dir))
        return Follower(
            LocalWorld(world_dir),
            None,
            Checkpoint(path),
            span_data=True,
            deliver_many=lambda batch: received.extend(s for d in batch for s in decode_spans(d.spans)),
            catch_up=ParallelCatchUp(config, post_fn, jobs=2, min_runs=5),
        )

    def decode_spans(spans):
        from telemetry.export import run_resource
        from telemetry.otlp_encode import encode_spans as encode_data

        return decode_request(encode_data(spans, run_resource("local")).SerializeToString())

    with pytest.raises(ConnectionError):
        asyncio.run(follower(failing_second).poll())
    acknowledged = {s.span_id for s in received}
    recorded = Checkpoint(path).runs()
    assert recorded  # the first chunk was acknowledged, and recorded
    expected = _expected(world_dir)
    run_of = {i: s.attributes["workflow.run.id"] for i, s in expected.items()}
    for run_id in recorded:  # never ahead of the collector: every span of a recorded run was acknowledged
        assert {i for i, r in run_of.items() if r == run_id} <= acknowledged
    asyncio.run(follower(post).poll())
    counts = Counter(s.span_id for s in received)
    assert set(counts) == set(expected)
    # at-least-once: only spans of runs not recorded when the pass failed may come again
    assert not {run_of[i] for i, n in counts.items() if n > 1} & set(recorded)
    assert len(Checkpoint(path).runs()) == 11


def test_follow_once_catches_up_on_a_big_history_on_every_core(harness_out, otlp_receiver, tmp_path):
    """`wft follow`'s first pass over 520 runs goes through the worker processes: every span once."""
    from bench.synth import scale_local

    world_dir = tmp_path / "world"
    scale_local(harness_out / "local-data", world_dir, 520)
    checkpoint = tmp_path / "cp.sqlite3"
    done = wft(
        "follow",
        "--once",
        "--dir",
        str(world_dir),
        "--checkpoint",
        str(checkpoint),
        "--otlp",
        otlp_receiver.url,
        "--jobs",
        "2",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    expected = _expected(world_dir)
    assert Counter(s.span_id for s in otlp_receiver.spans) == Counter(expected.keys())
    runs = Checkpoint(checkpoint).runs()
    assert len(runs) == 520 and all(s.complete and s.last_id for s in runs.values())


def test_postgres_reads_many_logs_in_one_statement_as_each_alone(harness_pg_url):
    world = PostgresWorld(harness_pg_url)

    async def go():
        runs = [r.run_id async for r in all_runs(world)]
        alone = {r: await event_log(world, r) for r in runs}
        middle = {r: events[len(events) // 2].event_id for r, events in alone.items()}
        whole = [(r, e) async for r, e in world.events.logs(dict.fromkeys(runs), page_size=7)]  # pages split runs
        after = {r: e async for r, e in world.events.logs(middle, page_size=5)}
        await world.close()
        return runs, alone, middle, whole, after

    runs, alone, middle, whole, after = asyncio.run(go())
    assert [r for r, _ in whole] == sorted(runs)  # every run, in run-id order
    for run_id, events in whole:
        assert [e.event_id for e in events] == [e.event_id for e in alone[run_id]]
        assert [e.event_data for e in events] == [e.event_data for e in alone[run_id]]
        assert [e.event_id for e in after[run_id]] == [e.event_id for e in alone[run_id] if e.event_id > middle[run_id]]


def _parallel_follower(world: PostgresWorld, url: str, tmp_path: Path, post, deliver_many) -> Follower:
    """A follower whose first pass goes through two catch-up workers (from two runs on)."""
    from telemetry.backends import BackendConfig
    from telemetry.follow import ParallelCatchUp

    return Follower(
        world,
        None,
        Checkpoint(tmp_path / "cp.sqlite3"),
        span_data=True,
        deliver_many=deliver_many,
        catch_up=ParallelCatchUp(BackendConfig("postgres", url=url), post, jobs=2, min_runs=2),
    )


def test_follower_on_postgres_with_a_parallel_first_pass_sends_each_span_once(harness_pg_url, tmp_path):

    received, post = _catch_up_collector()
    delivered: list[str] = []
    world = PostgresWorld(harness_pg_url)

    async def go():
        follower = _parallel_follower(
            world,
            harness_pg_url,
            tmp_path,
            post,
            lambda batch: delivered.extend(i for d in batch for i in _ids(d.spans)),
        )
        await follower.poll()
        second = await follower.poll()
        expected = [s async for run in all_runs(world) for s in (await run_trace(world, run)).spans]
        await world.close()
        return second, expected

    second, expected = asyncio.run(go())
    assert second == 0 and received  # the finished runs went through the workers
    ids = [s.span_id for s in received] + delivered
    assert Counter(ids) == Counter(f"{s.context.span_id:016x}" for s in expected)


def test_catch_up_workers_build_each_log_as_it_is_read(harness_pg_url, tmp_path, monkeypatch):
    """A catch-up worker builds each run as its log arrives: it read its whole chunk's logs first
    (64 runs of 10^4 steps held at once: gigabytes). The workers are forked, so what they do is
    written to a file: a log read ("r") is built ("b") before the next is read."""
    from telemetry import follow

    trail = tmp_path / "trail"
    logs_type = type(PostgresWorld(harness_pg_url).events)
    real_logs, real_feed = logs_type.logs, follow.RunTraceBuilder.feed

    def note(mark: str) -> None:
        with open(trail, "a") as out:
            out.write(f"{os.getpid()} {mark}\n")

    async def noted_logs(self, after, **options):
        async for item in real_logs(self, after, **options):
            note("r")
            yield item

    def noted_feed(self, events):
        note("b")
        return real_feed(self, events)

    monkeypatch.setattr(logs_type, "logs", noted_logs)
    monkeypatch.setattr(follow.RunTraceBuilder, "feed", noted_feed)
    received, post = _catch_up_collector()
    world = PostgresWorld(harness_pg_url)

    async def go():
        follower = _parallel_follower(world, harness_pg_url, tmp_path, post, lambda batch: None)
        await follower.poll()
        await world.close()

    asyncio.run(go())
    assert received
    by_worker: dict[str, list[str]] = {}
    for line in trail.read_text().splitlines():
        pid, mark = line.split()
        by_worker.setdefault(pid, []).append(mark)
    worked = [marks for marks in by_worker.values() if "b" in marks and marks.count("r") > 1]
    assert worked
    for marks in worked:
        held = 0
        for mark in marks:
            held += 1 if mark == "r" else -1
            assert held <= 1, marks  # never a second log read before the first was built


def test_a_queue_notification_wakes_a_waiting_follower_at_once(pg_server, harness_out):
    """world-postgres's queue (graphile-worker) NOTIFYs when the SDK adds a job, as it does right
    after each step_completed: a follower waiting out its interval reads at once."""
    import psycopg

    url = pg_server.create_database("wakeup")
    pg_server.psql("-f", str(harness_out / "postgres" / "world.sql"), db="wakeup")
    world = PostgresWorld(url)
    follower = Follower(world, lambda *a: None, Checkpoint(None), interval=30.0)

    async def go():
        await follower.poll()
        started = time.monotonic()
        idle = await follower.pause(0.3, lambda: False)
        idle_took = time.monotonic() - started

        async def add_job() -> None:
            await asyncio.sleep(0.3)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                # the real graphile-worker function from the real dump, as world-postgres queues a flow
                await conn.execute("SELECT graphile_worker.add_job('workflow_flows', '{}'::json)")

        adding = asyncio.create_task(add_job())
        started = time.monotonic()
        woken = await follower.pause(30.0, lambda: False)
        woken_took = time.monotonic() - started
        await adding
        await world.close()
        return idle, idle_took, woken, woken_took

    idle, idle_took, woken, woken_took = asyncio.run(go())
    assert not idle and idle_took >= 0.3  # nothing written: the whole interval
    assert woken and woken_took < 5.0  # the job's notification, not the 30 s interval
