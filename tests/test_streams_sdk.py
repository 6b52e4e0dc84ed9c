"""telemetry.streams.StreamWriter against the real SDKs: what it writes, they read.

The TypeScript SDK (@workflow/core 4.8 and the world packages from the sdk-harness's npm install,
driven by tests/vercel_node/streams.mjs) reads a stream StreamWriter wrote with its own
``getRun(runId).getReadable()`` on world-local (a copy of the harness's mid-run data dir),
world-postgres (the harness's mid-run dump in a real PostgreSQL) and world-vercel (the contract
fake), encrypted too; and what the SDK's own writer wrote reads back through our world readers with
the same values. On vercel-workflow's local world (the Python SDK, a test dependency) the run is
created by vercel-workflow itself, and its own ``read_stream`` reads back what we wrote.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import random
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from ulid import ULID

from telemetry.backends.local import LocalWorld
from telemetry.backends.postgres import PostgresWorld
from telemetry.backends.vercel import VercelConfig, VercelWorld
from telemetry.stream_format import LOCAL_EOF_FILE, POSTGRES_EOF_ROW, decode_chunks, encode_chunk, serialize_value
from telemetry.streams import StreamWriter, stream_name
from telemetry.world import World, traced

from .fake_vercel_backend import FakeVercelBackend
from .test_backends_vercel import tagged
from .test_stream_format import EXPECTED, VALUES, random_value, streams_js

#: the five kinds of value the issue names: string, number, object, Uint8Array, Date
FIVE: list[Any] = ["hello", 42, {"a": 1, "nested": {"b": [1, 2, "x"]}}, b"\x00\x01\xff", VALUES[5]]


@pytest.fixture(scope="module")
def sdk(harness_app_dir: Path) -> dict[str, Any]:
    return {"modules": harness_app_dir / "node_modules", "app": harness_app_dir}


async def _write(world: World, run_id: str, namespace: str, values: list[Any], **options: Any) -> StreamWriter:
    """Half the values one write each, the rest as one batch, then the close; nothing dropped."""
    writer = StreamWriter(world, run_id, namespace=namespace, **options)
    half = len(values) // 2
    for value in values[:half]:
        assert await writer.write(value) is True
    assert await writer.write_many(values[half:]) is True
    assert await writer.close() is True
    assert (writer.written, writer.dropped) == (len(values), 0)
    return writer


async def _read(world: World, name: str, run_id: str) -> tuple[list[Any], bool]:
    """A stream through our world reader and decoder (what ``wft`` shows of it)."""
    page = await world.streams.get_chunks(name, run_id, limit=10_000)
    return decode_chunks(chunk.data for chunk in page.data), page.done


def _run(coroutine_factory: Any, world: Any) -> Any:
    async def scenario() -> Any:
        try:
            return await coroutine_factory()
        finally:
            await world.close()

    return asyncio.run(scenario())


# ---- world-local (TypeScript 4.x) ----------------------------------------------------------------
@pytest.fixture
def local_data(harness_out: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the harness's mid-run world-local data and a run still running in it."""
    data = tmp_path / "local-data"
    shutil.copytree(harness_out / "local-data-midrun", data)
    running = [
        p.stem for p in sorted((data / "runs").glob("wrun_*.json")) if json.loads(p.read_text())["status"] == "running"
    ]
    assert running, "the mid-run snapshot has no running run"
    return data, running[0]


def test_world_local_the_sdk_reads_what_streamwriter_wrote_and_back(sdk, local_data):
    data, run_id = local_data
    world = LocalWorld(data)
    assert world.streams.sdk == "typescript"  # a TS 4.x directory
    writer = _run(lambda: _write(world, run_id, "from-python", VALUES), world)
    env = {"WORKFLOW_LOCAL_DATA_DIR": str(data)}
    assert streams_js(sdk, "read", "local", run_id, "from-python", env=env)["values"] == EXPECTED

    files = sorted((data / "streams" / "chunks").glob(f"{writer.name}-chnk_*.bin"))  # the SDK's naming
    assert [f.read_bytes() for f in files] == [*(b"\x00" + encode_chunk(v) for v in VALUES), LOCAL_EOF_FILE]

    written = streams_js(sdk, "write", "local", run_id, "from-sdk", env=env)
    world = LocalWorld(data)
    values, done = _run(lambda: _read(world, written["name"], run_id), world)
    assert done and tagged(values) == EXPECTED


def test_world_local_a_write_after_the_run_ended_is_dropped_not_stored(local_data):
    data, _ = local_data
    finished = next(
        p.stem
        for p in sorted((data / "runs").glob("wrun_*.json"))
        if json.loads(p.read_text())["status"] == "completed"
    )
    world = LocalWorld(data)

    async def late() -> StreamWriter:
        writer = StreamWriter(world, finished, namespace="late")
        assert await writer.write("too late") is False
        assert await writer.close() is False
        return writer

    writer = _run(late, world)
    assert writer.dropped == 1 and not list((data / "streams" / "chunks").glob(f"{writer.name}-*"))


# ---- world-postgres ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_url(pg_server, harness_out) -> str:
    """A database loaded from the harness's mid-run world-postgres dump (schema and running runs)."""
    url = pg_server.create_database("streams_sdk")
    pg_server.psql("-f", str(harness_out / "postgres" / "world-midrun.sql"), db="streams_sdk")
    return url


def _running_pg_run(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT id FROM workflow.workflow_runs WHERE status = 'running' ORDER BY id LIMIT 1"
        ).fetchone()
    assert row, "the mid-run dump has no running run"
    return str(row[0])


def test_world_postgres_the_sdk_reads_what_streamwriter_wrote_and_back(sdk, pg_url):
    run_id = _running_pg_run(pg_url)
    world = PostgresWorld(pg_url)
    writer = _run(lambda: _write(world, run_id, "from-python", VALUES), world)
    env = {"WORKFLOW_POSTGRES_URL": pg_url}
    assert streams_js(sdk, "read", "postgres", run_id, "from-python", env=env)["values"] == EXPECTED

    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT data, eof FROM workflow.workflow_stream_chunks WHERE stream_id = %s ORDER BY id", [writer.name]
        ).fetchall()
    assert [(bytes(d), e) for d, e in rows] == [*((encode_chunk(v), False) for v in VALUES), POSTGRES_EOF_ROW]

    written = streams_js(sdk, "write", "postgres", run_id, "from-sdk", env=env)
    world = PostgresWorld(pg_url)
    values, done = _run(lambda: _read(world, written["name"], run_id), world)
    assert done and tagged(values) == EXPECTED


def test_world_postgres_a_long_batch_keeps_its_order(sdk, pg_url):
    """Chunk ids order a stream (and the SDK's live reader skips an id not above the last):
    300 chunks written back to back, many in one millisecond, come back in order."""
    run_id = _running_pg_run(pg_url)
    values = [{"i": i, "at": VALUES[5], "bytes": bytes([i % 256])} for i in range(300)]
    world = PostgresWorld(pg_url)
    _run(lambda: _write(world, run_id, "long", values), world)
    read = streams_js(sdk, "read", "postgres", run_id, "long", env={"WORKFLOW_POSTGRES_URL": pg_url})
    assert read["values"] == tagged(values)


# ---- world-vercel (the contract fake), plain and encrypted ------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeVercelBackend]:
    backend = FakeVercelBackend()
    _, stop = backend.serve()
    yield backend
    stop()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_world_vercel_the_sdk_reads_what_streamwriter_wrote_and_back(sdk, fake, encrypted):
    env = {"FAKE_URL": fake.url, "TOKEN": fake.token}
    settings = {"VERCEL_TOKEN": fake.token, "VERCEL_WORKFLOW_SERVER_URL": fake.url}
    if encrypted:
        key = base64.b64encode(os.urandom(32)).decode()
        env |= {"DEPLOYMENT_KEY": key, "PROJECT": "prj_streams", "DEPLOYMENT_ID": "dpl_streams"}
        settings |= {"VERCEL_DEPLOYMENT_KEY": key, "WORKFLOW_VERCEL_PROJECT": "prj_streams"}
    run_id = f"wrun_{ULID()}"
    fake.apply(
        run_id,
        "run_created",
        correlation_id=None,
        spec_version=2,
        data={"deploymentId": "dpl_streams", "workflowName": "wf"},
        payload=serialize_value([]),
    )
    world = VercelWorld(VercelConfig.from_env(settings))
    # through traced(), as the CLI and the service hold a world: the run key is still the world's
    writer = _run(lambda: _write(traced(world, peer_service="workflow-server"), run_id, "from-python", VALUES), world)
    stored = fake.streams[writer.name]
    assert stored.done and len(stored.chunks) == len(VALUES)
    assert all(chunk[4:8] == (b"encr" if encrypted else b"devl") for chunk in stored.chunks)
    assert streams_js(sdk, "read", "vercel", run_id, "from-python", env=env)["values"] == EXPECTED

    written = streams_js(sdk, "write", "vercel", run_id, "from-sdk", env=env)
    world = VercelWorld(VercelConfig.from_env(settings))
    values, done = _run(lambda: world.streams.read_values(written["name"], run_id), world)
    assert done and tagged(values) == EXPECTED


# ---- vercel-workflow's local world (the Python SDK) --------------------------------------------------
@pytest.fixture
def pyworld(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Path, str]]:
    """vercel-workflow's own LocalWorld on a fresh dir, bound as its world, and a run it created."""
    world_mod = pytest.importorskip("vercel.workflow._internal.world")
    local_mod = pytest.importorskip("vercel.workflow._internal.worlds.local")
    serialization = pytest.importorskip("vercel.workflow._internal.serialization")
    data = tmp_path / "pydata"
    monkeypatch.setenv("WORKFLOW_LOCAL_DATA_DIR", str(data))
    world = local_mod.LocalWorld()
    world_mod.set_world(world)
    run_id = f"wrun_{ULID()}"

    async def create() -> None:
        created = world_mod.RunCreatedEventData(
            deployment_id=await world.get_deployment_id(),
            workflow_name="workflow//tests//streams",
            input=serialization.PayloadEncoder().encode([]),
        )
        await world.events_create(run_id, created.into_event())

    asyncio.run(create())
    yield world, data, run_id
    world_mod.set_world(None)


async def _read_stream(run_id: str, name: str) -> list[Any]:
    from vercel.workflow import read_stream

    async def drain() -> list[Any]:
        return [value async for value in read_stream(run_id, name)]

    return await asyncio.wait_for(drain(), timeout=60)


def test_vercel_workflow_reads_what_streamwriter_wrote_with_its_read_stream(pyworld):
    pyw, data, run_id = pyworld
    world = LocalWorld(data)
    assert world.streams.sdk == "python"  # per-stream folders, no version.txt: vercel-workflow's
    values = [*VALUES, {1, 2, 3}, 2**60]
    writer = _run(lambda: _write(world, run_id, "from-python", values), world)
    assert [p.name for p in (data / "streams" / "chunks" / writer.name).iterdir() if p.name.startswith("chnk_")]
    assert asyncio.run(_read_stream(run_id, writer.name)) == values
    assert asyncio.run(pyw.streams_list(run_id)) == [writer.name]  # registered where the SDK lists streams


def test_vercel_workflow_cannot_read_the_typescript_form_which_is_why_the_world_picks(pyworld):
    """The reason for ``world.streams.sdk``: the TypeScript SDK's ``["Date", <ref>]`` (here forced
    with ``sdk="typescript"``) stops vercel-workflow's reader; the string before it reads."""
    _, data, run_id = pyworld
    world = LocalWorld(data)
    writer = _run(lambda: _write(world, run_id, "ts-form", ["before", VALUES[5]], sdk="typescript"), world)
    from vercel.workflow import read_stream

    got: list[Any] = []

    async def drain() -> None:
        async for value in read_stream(run_id, writer.name):
            got.append(value)

    with pytest.raises(Exception):  # noqa: B017 -- whatever vercel-workflow raises (today an AttributeError)
        asyncio.run(asyncio.wait_for(drain(), timeout=60))
    assert got == ["before"]


def test_python_reads_what_vercel_workflow_wrote(pyworld):
    from vercel.workflow._internal.streams import encode_value

    pyw, data, run_id = pyworld
    name = stream_name(run_id, "from-vercel-workflow")
    values = [*FIVE, {1, 2}, 2**60, None, True, [1, "two"]]

    async def write() -> None:
        await pyw.streams_write_multi(run_id, name, [encode_value(v) for v in values])
        await pyw.streams_close(run_id, name)

    asyncio.run(write())
    world = LocalWorld(data)
    read, done = _run(lambda: _read(world, name, run_id), world)
    assert done and read == values


def test_the_python_form_reads_back_as_vercel_workflows_own_chunks_do():
    """1000 random values (escapes, integer-like keys, BigInt, -0, NaN, sets, dates, bytes, nesting):
    our vercel-workflow form, revived by vercel-workflow's reader, equals what that reader makes of
    vercel-workflow's own serialization of the same value (where vercel-workflow can serialize it)."""
    from vercel.workflow._internal import serialization
    from vercel.workflow._internal.streams import encode_value

    from .fakes import FakeInMemoryWorld

    writer = StreamWriter(FakeInMemoryWorld(), "wrun_x", sdk="python")
    rng = random.Random(2026)
    compared = 0
    for _ in range(1000):
        value = random_value(rng)
        ours = serialization.hydrate(writer.encode(value)[4:], what="ours")
        try:
            theirs = serialization.hydrate(encode_value(value)[4:], what="theirs")
        except serialization.SerializationError:  # e.g. a Map (a dict with non-str keys): ours still reads
            continue
        assert _comparable(ours) == _comparable(theirs), value
        compared += 1
    assert compared > 900


def _comparable(value: Any, *, in_set: bool = False) -> Any:
    """Values as comparable data: NaN as a marker (NaN != NaN), numbers as floats (one JavaScript
    number type; a JavaScript Set holds -0 as 0), sets sorted, dict key order ignored (JavaScript
    puts integer-like keys first, Python keeps insertion order)."""
    if isinstance(value, float) and math.isnan(value):
        return ("NaN",)
    if isinstance(value, (set, frozenset)):
        return ("set", sorted((_comparable(v, in_set=True) for v in value), key=repr))
    if isinstance(value, dict):
        return ("dict", sorted(((k, _comparable(v)) for k, v in value.items()), key=repr))
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return ("bytes", bytes(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ("num", float(value) + 0.0 if in_set else float(value))
    return (type(value).__name__, value)


def test_the_typescript_sdk_reads_the_python_form_of_the_five_values(sdk, local_data):
    """The forms vercel-workflow writes for Date, Uint8Array and BigInt are devalue's built-ins,
    which the TypeScript SDK reads as well: a stream written for a Python app stays readable there."""
    data, run_id = local_data
    world = LocalWorld(data)
    values = [*FIVE, datetime(1999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC), b""]
    _run(lambda: _write(world, run_id, "python-form", values, sdk="python"), world)
    read = streams_js(sdk, "read", "local", run_id, "python-form", env={"WORKFLOW_LOCAL_DATA_DIR": str(data)})
    assert read["values"] == tagged(values)
