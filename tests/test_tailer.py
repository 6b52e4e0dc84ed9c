"""The collector's world tailer (``collector/tailer.py``) on copies of real world-local data:
no read on the service's event loop, a prompt stop whatever the world dir holds, idle passes
that read nothing, and a run with an unreadable event flagged while the others are stored."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from telemetry.backends import BackendConfig
from telemetry.backends.local import LocalWorld

from .pgserver import free_port


def _world_spans(store: Path) -> int:
    if not store.exists():
        return 0
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(DISTINCT span_id) FROM spans WHERE source = 'world'").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        conn.close()


def _wait(predicate, timeout: float, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError("timed out")


def _expected_spans(world_dir: Path, skip_run: str | None = None) -> int:
    from telemetry.reading import all_runs, run_trace

    world = LocalWorld(world_dir)

    async def go():
        return len(
            [s async for run in all_runs(world) if run.run_id != skip_run for s in (await run_trace(world, run)).spans]
        )

    return asyncio.run(go())


def test_serve_stops_within_two_seconds_with_a_fifo_in_the_world_dir(harness_out, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(harness_out / "local-data", world)
    first = sorted((world / "events").glob("*.json"))[0].name
    run_id = first.split("-", 1)[0]
    os.mkfifo(world / "events" / f"{run_id}-evnt_01M8PCFRVQJTNTGP647J6JH7ZT.json")  # nobody ever writes it
    os.mkfifo(world / "runs" / "wrun_01M8PCFRVQJTNTGP647J6JH7ZZ.json")
    store = tmp_path / "store.sqlite3"
    log = tmp_path / "serve.log"  # a file, not a pipe: read whenever the test needs to say what happened
    port = free_port()
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "telemetry", "serve", "--port", str(port), "--store", str(store)]
            + ["--world", "local", "--dir", str(world)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )

    def said() -> str:
        return log.read_text(errors="replace")[-2000:]

    try:
        # every other run is stored (the one with the FIFO in its log may be flagged instead)
        others = _expected_spans(harness_out / "local-data", skip_run=run_id)

        deadline = time.monotonic() + 60
        while _world_spans(store) < others:
            # died (a port taken meanwhile, a start-up error) or stuck: fail now, saying what it said
            assert process.poll() is None, f"wft serve exited {process.returncode}:\n{said()}"
            assert time.monotonic() < deadline, f"{_world_spans(store)}/{others} spans after 60 s:\n{said()}"
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            assert response.status == 200  # the service answers while the FIFO sits in the world dir
    finally:
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            code = process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        took = time.monotonic() - started
    assert took < 2.0, f"took {took:.1f}s to stop"
    assert code == 0 and "Traceback" not in said(), said()


class _StuckWorld:
    """The real world reader, except that listing changes first opens a FIFO the way a naive
    reader would (a blocking ``open``, which nothing interrupts until a writer shows up)."""

    def __init__(self, world: LocalWorld, fifo: Path) -> None:
        self._world = world
        self.fifo = fifo
        self.runs = world.runs
        self.events = self

    async def changes(self, token):
        with open(self.fifo, "rb") as fh:  # blocks this thread: no writer will come
            fh.read()
        return await self._world.events.changes(token)

    async def list(self, **kwargs):
        return await self._world.events.list(**kwargs)

    async def close(self) -> None:
        return None


def test_a_read_stuck_in_the_os_neither_blocks_the_service_loop_nor_its_stop(harness_out, tmp_path):
    from collector.metrics import Metrics
    from collector.store import Store
    from collector.tailer import Tailer
    from collector.writer import Writer

    fifo = tmp_path / "stuck.fifo"
    os.mkfifo(fifo)
    store = Store(tmp_path / "store.sqlite3")
    writer = Writer(store)
    writer.start()
    tailer = Tailer(
        _StuckWorld(LocalWorld(harness_out / "local-data"), fifo),
        writer,
        Metrics(),
        str(tmp_path / "cp.json"),
        world_kind="local",
    )

    async def go() -> tuple[float, float]:
        stop = asyncio.Event()
        task = asyncio.create_task(tailer.run(stop))
        ticks = 0
        started = time.monotonic()
        while time.monotonic() - started < 1.0:  # the loop keeps turning while the read hangs
            await asyncio.sleep(0.01)
            ticks += 1
        stop.set()
        stopping = time.monotonic()
        await task
        return ticks, time.monotonic() - stopping

    ticks, took = asyncio.run(go())
    writer.stop()
    assert ticks > 50
    assert took < 2.0


def test_idle_passes_read_nothing_and_an_unreadable_run_is_flagged(collector, harness_out, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(harness_out / "local-data", world)
    victim = sorted((world / "events").glob("*.json"))[5]
    victim.write_bytes(victim.read_bytes()[:30])  # truncated for good
    old = time.time() - 3600
    os.utime(victim, (old, old))
    bad_run = victim.name.split("-", 1)[0]
    service = collector(world=BackendConfig("local", data_dir=str(world)), tail_interval=0.05)
    follower = service.tailer.follower
    expected = _expected_spans(harness_out / "local-data", skip_run=bad_run)
    _wait(lambda: service.metrics.tailer_spans >= expected and follower.problems, 30)
    read, passes = follower.events_read, follower.passes
    time.sleep(1.0)
    assert follower.passes >= passes + 5 and follower.events_read == read  # idle: nothing read again
    assert service.metrics.tailer_spans == expected  # none stored twice
    assert list(follower.problems) == [bad_run] and str(victim) in follower.problems[bad_run]
    with urllib.request.urlopen(f"{service.url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert "wft_tailer_unreadable_runs 1" in metrics


def test_the_json_checkpoint_of_an_earlier_collector_is_migrated(collector, harness_out, tmp_path):
    world = harness_out / "local-data"
    legacy = Path(str(tmp_path / "store.sqlite3") + ".follow.json")

    async def v1() -> dict:
        from telemetry.reading import all_runs, event_log

        reader = LocalWorld(world)
        return {
            "version": 1,
            "runs": {
                r.run_id: {"events": len(await event_log(reader, r.run_id)), "sent": [], "complete": True}
                async for r in all_runs(reader)
            },
        }

    legacy.write_text(json.dumps(asyncio.run(v1())))
    service = collector(world=BackendConfig("local", data_dir=str(world)), tail_interval=0.05)
    follower = service.tailer.follower
    _wait(lambda: follower.passes >= 3, 30)
    assert service.metrics.tailer_spans == 0  # everything was sent before the upgrade
    assert not legacy.exists() and Path(str(legacy) + ".migrated").exists()
    assert Path(str(tmp_path / "store.sqlite3") + ".follow.sqlite3").exists()


def test_the_tailer_reads_a_postgres_world_as_soon_as_its_queue_says_so(collector, pg_server, harness_out):
    """world-postgres's queue NOTIFYs for each job the SDK adds (one right after each step ends):
    the tailer's next pass follows within a fraction of its interval (30 s here)."""
    import psycopg

    url = pg_server.create_database("tailer_wakeup")
    pg_server.psql("-f", str(harness_out / "postgres" / "world.sql"), db="tailer_wakeup")
    service = collector(world=BackendConfig("postgres", url=url), tail_interval=30.0)
    follower = service.tailer.follower
    _wait(lambda: follower.passes >= 1 and service.metrics.tailer_spans > 0, 30)
    passes = follower.passes
    time.sleep(0.5)
    assert follower.passes == passes  # idle: it waits out its interval
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT graphile_worker.add_job('workflow_flows', '{}'::json)")  # as the SDK queues a flow
    _wait(lambda: follower.passes > passes, 5)
