"""World readers on real harness data: stream writes in each world's own format, the
post-completion drop, connection loss, and picking a world from the SDK's env vars."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import psycopg
import pytest

from telemetry.backends import backend_config, open_backend
from telemetry.backends.local import LocalWorld
from telemetry.backends.postgres import PostgresWorld
from telemetry.errors import HookNotFoundError, WorkflowRunNotFoundError
from telemetry.payloads import decode_payload, split_frames
from telemetry.streams import StreamWriter, stream_name
from telemetry.tracing import benign_counts

from .conftest import summary


def test_streams_read_like_the_sdk_reader_saw_them(real_world):
    _, world, results = real_world
    stream = results["stream"]

    async def go():
        names = await world.streams.list(stream["runId"])
        assert names == sorted([stream_name(stream["runId"]), stream_name(stream["runId"], "text")])
        chunks = await world.streams.get_chunks(stream_name(stream["runId"]), stream["runId"])
        values = [decode_payload(f) for c in chunks.data for f in split_frames(c.data)]
        info = await world.streams.get_info(stream_name(stream["runId"]), stream["runId"])
        return chunks, values, info

    chunks, values, info = asyncio.run(go())
    assert chunks.done and info.done and info.tail_index == len(chunks.data) - 1
    assert [{k: v for k, v in value.items()} for value in values] == stream["streamDefault"]["chunks"]


def test_late_chunk_after_eof_is_invisible_to_readers(real_world):
    kind, world, results = real_world
    late = results["writeAfterClose"]
    name = stream_name(late["runId"])

    async def go():
        if kind == "local":
            return world.streams.read_all(name)
        return await world.streams.read_all(name)

    chunks, done, after_eof = asyncio.run(go())
    assert done and after_eof == 1  # the SDK stored it after EOF: silent loss
    assert len(chunks) == len(late["streamDefault"]["chunks"])


def test_hooks_and_runs_not_found(real_world):
    _, world, _ = real_world
    with pytest.raises(WorkflowRunNotFoundError):
        asyncio.run(world.runs.get("wrun_01M80NBG3AQ2Q8H880S7SKMAS0"))
    with pytest.raises(HookNotFoundError):
        asyncio.run(world.hooks.get_by_token("no-such-token"))


@pytest.fixture
def writable_local(harness_out, tmp_path):
    data = tmp_path / "local-data"
    shutil.copytree(harness_out / "local-data-midrun", data)
    return LocalWorld(data)


def test_local_midrun_snapshot_has_the_pending_hook_and_wait(writable_local, harness_out):
    results = summary(harness_out, "local")

    async def go():
        hook = await writable_local.hooks.get_by_token(results["hook"]["token"])
        waits = await writable_local.waits.list(run_id=results["sleep"]["runId"])
        return hook, waits

    hook, waits = asyncio.run(go())
    assert hook.run_id == results["hook"]["runId"] and hook.is_webhook is False
    assert [w.status for w in waits] == ["waiting"]


def test_stream_writer_on_local_world(writable_local, harness_out, tmp_path):
    results = summary(harness_out, "local")
    running = results["sleep"]["runId"]  # still sleeping in the mid-run snapshot
    finished = results["sequential"]["runId"]
    shutil.copytree(harness_out / "local-data", tmp_path / "final")
    final = LocalWorld(tmp_path / "final")  # every run has finished here

    async def go():
        run = await writable_local.runs.get(running)
        assert run.status == "running"
        out = StreamWriter(writable_local, running, namespace="py", raw=True)  # byte for byte
        assert await out.write(b"\x00\x00\x00\x03abc") and await out.write("text")
        assert await out.close()
        chunks = await writable_local.streams.get_chunks(out.name, running)
        late = StreamWriter(final, finished)
        dropped = await late.write(b"too late")
        return out, chunks, late, dropped

    out, chunks, late, dropped = asyncio.run(go())
    assert [c.data for c in chunks.data] == [b"\x00\x00\x00\x03abc", b"text"] and chunks.done
    assert split_frames(chunks.data[0].data) == [b"abc"]
    assert out.name in asyncio.run(writable_local.streams.list(running))
    files = sorted((writable_local.root / "streams" / "chunks").glob(f"{out.name}-chnk_*.bin"))
    assert [f.read_bytes()[:1] for f in files] == [b"\x00", b"\x00", b"\x01"]  # world-local's EOF flag byte
    assert dropped is False and late.dropped == 1 and sum(benign_counts().values()) == 1
    assert not list((final.root / "streams" / "chunks").glob(f"{late.name}-chnk_*"))


def test_stream_writer_on_postgres_world_notifies(pg_server, harness_out, harness_pg_url):
    url = pg_server.create_database("harness_midrun")
    pg_server.psql("-f", str(harness_out / "postgres" / "world-midrun.sql"), db="harness_midrun")
    results = summary(harness_out, "postgres")
    world = PostgresWorld(url)
    running = results["sleep"]["runId"]
    notes: list[str] = []
    listening = threading.Event()

    def listen() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("LISTEN workflow_event_chunk")
            listening.set()
            for note in conn.notifies(timeout=10, stop_after=3):
                notes.append(note.payload)

    listener = threading.Thread(target=listen)
    listener.start()
    listening.wait(10)

    async def go():
        assert (await world.runs.get(running)).status == "running"
        out = StreamWriter(world, running, raw=True)  # byte for byte
        assert await out.write(b"one") and await out.write(b"two") and await out.close()
        chunks = await world.streams.get_chunks(out.name, running)
        await world.close()
        final = PostgresWorld(harness_pg_url)  # every run has finished in the final dump
        late = StreamWriter(final, results["sequential"]["runId"])
        count = "SELECT count(*) AS n FROM workflow.workflow_stream_chunks WHERE stream_id = %s"
        before = (await final.query(count, [late.name]))[0]["n"]
        dropped = await late.write(b"too late")
        assert (await final.query(count, [late.name]))[0]["n"] == before  # nothing stored where no reader looks
        await final.close()
        return out, chunks, dropped

    out, chunks, dropped = asyncio.run(go())
    listener.join(15)
    assert [c.data for c in chunks.data] == [b"one", b"two"] and chunks.done
    assert len(notes) == 3 and all(out.name in n and "chnk_" in n for n in notes)
    assert dropped is False


def test_postgres_connection_loss_is_retried(pg_server, harness_pg_url, caplog):
    world = PostgresWorld(harness_pg_url, retries=8, backoff=0.2)
    assert asyncio.run(world.events.counts_by_run())

    def bounce() -> None:
        pg_server.stop("immediate")
        time.sleep(1.0)
        pg_server.start()

    async def go():
        thread = threading.Thread(target=bounce)
        thread.start()
        await asyncio.sleep(0.3)
        page = await world.runs.list()
        thread.join()
        await world.close()
        return page

    caplog.set_level("WARNING", logger="telemetry.backends.postgres")
    page = asyncio.run(go())
    assert len(page.data) == 11
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings and all("connection lost" in w and "retrying" in w for w in warnings)
    assert not any("world:world@" in w for w in warnings)  # no password in logs


def test_postgres_unreachable_is_a_clear_error():
    world = PostgresWorld("postgres://world:secret@127.0.0.1:9/world", retries=1, backoff=0.01)
    with pytest.raises(Exception) as raised:
        asyncio.run(world.runs.list())
    assert "unreachable" in str(raised.value) and "secret" not in str(raised.value)


def open_world(*args, **kwargs):
    config = backend_config(*args, **kwargs)
    assert config is not None
    return open_backend(config)


def test_open_backend_follows_the_sdk_env(monkeypatch, harness_out, harness_pg_url):
    monkeypatch.delenv("WORKFLOW_TARGET_WORLD", raising=False)
    monkeypatch.setenv("WORKFLOW_LOCAL_DATA_DIR", str(harness_out / "local-data"))
    assert isinstance(open_world(), LocalWorld)
    monkeypatch.setenv("WORKFLOW_TARGET_WORLD", "@workflow/world-postgres")
    monkeypatch.setenv("WORKFLOW_POSTGRES_URL", harness_pg_url)
    world = open_world()
    assert isinstance(world, PostgresWorld) and world.url == harness_pg_url
    assert isinstance(open_world("local", data_dir=str(harness_out / "local-data")), LocalWorld)
    monkeypatch.delenv("WORKFLOW_TARGET_WORLD")
    assert isinstance(open_world(url=harness_pg_url), PostgresWorld)
