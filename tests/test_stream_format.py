"""telemetry.stream_format: stream chunks serialized and framed exactly as the SDK does.

Against the real SDK (@workflow/core 4.8 and the world packages from the sdk-harness's npm install,
under node: tests/vercel_node/streams.mjs): our frames are byte for byte the SDK's; a stream written
from Python is read back by ``getRun(runId).getReadable()`` with the original values on world-local,
world-postgres and world-vercel (the fake server), encrypted or not; a stream the SDK wrote is read
from Python with the same values; and every stream chunk the harness's real runs wrote decodes and
re-encodes to the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import random
import re
import shutil
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from ulid import ULID

from telemetry.backends.vercel import VercelConfig, VercelWorld
from telemetry.backends.vercel_keys import DeploymentKey
from telemetry.payloads import UNDEFINED, Encrypted, Opaque
from telemetry.stream_format import (
    LOCAL_EOF_FILE,
    POSTGRES_EOF_ROW,
    StreamDecoder,
    StreamFormatError,
    decode_chunks,
    devalue_stringify,
    encode_chunk,
    frame,
    local_chunk_file,
    parse_local_chunk_file,
    postgres_row,
    serialize_value,
    split_multi_chunks,
    vercel_multi_body,
)

from .fake_vercel_backend import FakeVercelBackend
from .test_backends_vercel import run_node, tagged

#: the Python twins of sdk.mjs's streamValues() (string, numbers, object, Uint8Array, Date, …)
VALUES: list[Any] = [
    "hello",
    42,
    3.5,
    {"a": 1, "nested": {"b": [1, 2, "x"]}, "<tag>": "</script>", "10": "ten", "2": "two"},
    b"\x00\x01\x02\xff",
    datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    None,
    True,
    'ünïcødé ✓ \u2028 "quoted"\n',
    [1, "two", {"three": 3}, "two"],
    1e21,
    1.5e-7,
    -12,
    b"",
]
EXPECTED = [tagged(v) for v in VALUES]


@pytest.fixture(scope="session")
def sdk(harness_app_dir: Path) -> dict[str, Any]:
    return {"modules": harness_app_dir / "node_modules", "app": harness_app_dir}


def streams_js(sdk: dict[str, Any], *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    if stdin is None:
        return run_node("streams.mjs", *args, modules=sdk["modules"], env=env or {}, cwd=sdk["app"])
    import subprocess

    result = subprocess.run(
        ["node", str(Path(__file__).parent / "vercel_node" / "streams.mjs"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=sdk["app"],
        env={**os.environ, "WFT_SDK_NODE_MODULES": str(sdk["modules"]), **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


# ---- byte for byte ------------------------------------------------------------------------------
def test_our_frames_are_the_sdks_frames_byte_for_byte(sdk):
    assert streams_js(sdk, "frames") == [encode_chunk(v).hex() for v in VALUES]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return rng.choice(["", "a", "<", '"', "\\", "\n\t\b\f\r", "\x00\x1f", "\u2028\u2029", "😀", "日本語", "x" * 40])
    if kind == 1:
        return rng.choice([0, 1, -1, 7, 2**31, 2**53 - 1, -(2**53 - 1), 10**15])
    if kind == 2:
        return rng.choice([0.5, -2.25, 0.1 + 0.2, 1e-7, 1.5e-6, 1e20, 1e21, 123456.789, 5e-324, 1.7976931348623157e308])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
    if kind == 5:
        return datetime(2020, 1, 1, tzinfo=UTC) + timedelta(milliseconds=rng.randrange(10**12))
    if kind == 6:
        return rng.choice([2**53 + 1, -(2**64), 10**30])  # BigInt
    if kind == 7:
        return rng.choice([math.nan, math.inf, -math.inf, -0.0, UNDEFINED])
    if kind in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 10:
        keys = ["a", "b", "0", "10", "2", "01", "-1", "4294967295", "4294967294", "<k>", "ü"]
        return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(5))}
    return {random_value(rng, 3) for _ in range(rng.randrange(4))}


def _wire(value: Any) -> Any:
    """A value as sdk.mjs's ``untagged`` rebuilds it in JavaScript."""
    if value is UNDEFINED:
        return {"$undefined": True}
    if isinstance(value, float) and (
        math.isnan(value) or math.isinf(value) or (value == 0 and math.copysign(1, value) < 0)
    ):
        return {
            "$num": "NaN" if math.isnan(value) else "-0" if value == 0 else ("Infinity" if value > 0 else "-Infinity")
        }
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53 - 1:
        return {"$bigint": str(value)}
    if isinstance(value, set):
        return {"$set": [_wire(v) for v in value]}
    if isinstance(value, dict):
        return {"$object": [[k, _wire(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return tagged(value)


def test_devalue_stringify_matches_the_sdk_on_awkward_values(sdk):
    """400 random values (escapes, integer-like keys, BigInt, -0, NaN, sets, dates, bytes, nesting)
    serialized by the SDK's own serializer and by ours: the same bytes."""
    rng = random.Random(1949)
    values = [random_value(rng) for _ in range(400)]
    theirs = streams_js(sdk, "frames", "-", stdin=json.dumps([_wire(v) for v in values]))
    ours = [encode_chunk(v).hex() for v in values]
    mismatches = [
        (v, bytes.fromhex(t)[8:], bytes.fromhex(o)[8:]) for v, t, o in zip(values, theirs, ours, strict=True) if t != o
    ]
    assert not mismatches, mismatches[:3]
    for value, chunk in zip(values, ours, strict=True):  # and each reads back as it went in
        (back,) = decode_chunks(bytes.fromhex(chunk))
        assert _same(back, value), (value, back)


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in b)
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# ---- chunks the real SDK wrote (the harness's runs) ---------------------------------------------
def _local_streams(data_dir: Path) -> dict[str, list[bytes]]:
    streams: dict[str, list[bytes]] = {}
    for path in sorted((data_dir / "streams" / "chunks").glob("*.bin")):
        name = path.name.rsplit("-chnk_", 1)[0]
        streams.setdefault(name, []).append(path.read_bytes())
    return streams


def test_every_local_chunk_the_sdk_wrote_decodes_and_reencodes_to_the_same_bytes(harness_out):
    streams = _local_streams(harness_out / "local-data")
    assert len(streams) >= 5
    kinds: set[str] = set()
    closed = 0
    for name, files in streams.items():
        closes = [i for i, body in enumerate(files) if parse_local_chunk_file(body)[0]]
        if closes:  # a run that failed or was cancelled leaves its stream open
            assert files[closes[0]] == LOCAL_EOF_FILE
            closed += 1
        for body in files[: closes[0] if closes else None]:
            eof, chunk = parse_local_chunk_file(body)
            assert not eof and local_chunk_file(chunk) == body
            (value,) = decode_chunks(chunk)
            assert encode_chunk(value) == chunk  # the same bytes, re-encoded from the value
            kinds.add(type(value).__name__)
            if name.endswith("_dGV4dA"):  # the "text" namespace: Uint8Array lines
                assert isinstance(value, bytes) and re.fullmatch(rb"[a-z]+-\d+\n", value)
    assert {"dict", "bytes"} <= kinds and closed >= 3


def _dump_rows(sql: Path) -> list[tuple[str, str, bytes, bool]]:
    rows = []
    copying = False
    for line in sql.read_text().splitlines():
        if line.startswith("COPY workflow.workflow_stream_chunks "):
            copying = True
            continue
        if copying:
            if line == "\\.":
                break
            chunk_id, stream_id, data, _created, eof, _run = line.split("\t")
            rows.append((chunk_id, stream_id, bytes.fromhex(data.removeprefix("\\\\x")), eof == "t"))
    return rows


def test_every_postgres_chunk_the_sdk_wrote_decodes_and_reencodes_to_the_same_bytes(harness_out):
    rows = _dump_rows(harness_out / "postgres" / "world.sql")
    assert len(rows) > 10
    by_stream: dict[str, list[tuple[bytes, bool]]] = {}
    for _, stream_id, data, eof in sorted(rows):
        by_stream.setdefault(stream_id, []).append((data, eof))
    late = closed_streams = 0
    for stream_rows in by_stream.values():
        values = []
        closed = False
        for data, eof in stream_rows:
            if eof:
                assert (data, eof) == POSTGRES_EOF_ROW
                closed = True
                continue
            assert postgres_row(data) == (data, False)
            (value,) = decode_chunks(data)
            assert encode_chunk(value) == data
            late += closed  # stored after the close: no SDK reader ever sees it
            values.append(value)
        closed_streams += closed
    assert closed_streams >= 3
    assert late == 1  # the harness's "late" write lands after the EOF row (seed issue #1949)


# ---- Python writes, the SDK reads (and the other way round) --------------------------------------
def _ulids(count: int) -> list[str]:
    first = ULID()
    return [str(ULID.from_int(int(first) + i)) for i in range(count)]


def _a_run(data_dir: Path) -> str:
    return sorted(p.stem for p in (data_dir / "runs").glob("wrun_*.json"))[0]


def _stream_name(run_id: str, namespace: str) -> str:
    return (
        f"{run_id.replace('wrun_', 'strm_')}_user_{base64.urlsafe_b64encode(namespace.encode()).decode().rstrip('=')}"
    )


def test_world_local_python_writes_the_sdk_reads_and_back(sdk, harness_out, tmp_path):
    data = tmp_path / "local-data"
    shutil.copytree(harness_out / "local-data", data)
    run_id = _a_run(data)
    name = _stream_name(run_id, "from-python")
    chunks = [*(local_chunk_file(encode_chunk(v)) for v in VALUES), LOCAL_EOF_FILE]
    for ulid, body in zip(_ulids(len(chunks)), chunks, strict=True):
        (data / "streams" / "chunks" / f"{name}-chnk_{ulid}.bin").write_bytes(body)
    env = {"WORKFLOW_LOCAL_DATA_DIR": str(data)}
    read = streams_js(sdk, "read", "local", run_id, "from-python", env=env)
    assert read["values"] == EXPECTED

    written = streams_js(sdk, "write", "local", run_id, "from-sdk", env=env)
    files = sorted((data / "streams" / "chunks").glob(f"{written['name']}-chnk_*.bin"))
    parsed = [parse_local_chunk_file(f.read_bytes()) for f in files]
    assert parsed[-1] == (True, b"") and not any(eof for eof, _ in parsed[:-1])
    assert tagged(decode_chunks(chunk for _, chunk in parsed[:-1])) == EXPECTED
    assert [chunk for _, chunk in parsed[:-1]] == [encode_chunk(v) for v in VALUES]


@pytest.fixture(scope="module")
def pg_streams_url(pg_server, harness_out) -> str:
    url = pg_server.create_database("stream_format")
    pg_server.psql("-f", str(harness_out / "postgres" / "world.sql"), db="stream_format")
    return url


def test_world_postgres_python_writes_the_sdk_reads_and_back(sdk, pg_streams_url):
    with psycopg.connect(pg_streams_url, autocommit=True) as conn:
        (run_id,) = conn.execute("SELECT id FROM workflow.workflow_runs ORDER BY id LIMIT 1").fetchone()
        name = _stream_name(run_id, "from-python")
        rows = [*(postgres_row(encode_chunk(v)) for v in VALUES), POSTGRES_EOF_ROW]
        for ulid, (data, eof) in zip(_ulids(len(rows)), rows, strict=True):
            conn.execute(
                "INSERT INTO workflow.workflow_stream_chunks (id, stream_id, run_id, data, created_at, eof)"
                " VALUES (%s, %s, %s, %s, now(), %s)",
                [f"chnk_{ulid}", name, run_id, data, eof],
            )
    env = {"WORKFLOW_POSTGRES_URL": pg_streams_url}
    read = streams_js(sdk, "read", "postgres", run_id, "from-python", env=env)
    assert read["values"] == EXPECTED

    written = streams_js(sdk, "write", "postgres", run_id, "from-sdk", env=env)
    with psycopg.connect(pg_streams_url) as conn:
        stored = conn.execute(
            "SELECT data, eof FROM workflow.workflow_stream_chunks WHERE stream_id = %s ORDER BY id", [written["name"]]
        ).fetchall()
    assert (bytes(stored[-1][0]), stored[-1][1]) == POSTGRES_EOF_ROW
    assert [bytes(d) for d, _ in stored[:-1]] == [encode_chunk(v) for v in VALUES]
    assert tagged(decode_chunks(bytes(d) for d, _ in stored[:-1])) == EXPECTED


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_world_vercel_python_writes_the_sdk_reads_and_back(sdk, encrypted):
    fake = FakeVercelBackend()
    url, stop = fake.serve()
    key = base64.b64encode(os.urandom(32)).decode()
    env = {"FAKE_URL": url, "TOKEN": fake.token}
    settings = {"VERCEL_TOKEN": fake.token, "VERCEL_WORKFLOW_SERVER_URL": url}
    if encrypted:
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

    async def write() -> None:
        name = _stream_name(run_id, "from-python")
        await world.streams.write_values(name, run_id, VALUES[:1])  # one chunk: a plain PUT
        await world.streams.write_values(name, run_id, VALUES[1:], close=True)  # a batch, then the close
        await world.close()

    try:
        asyncio.run(write())
        stored = fake.streams[_stream_name(run_id, "from-python")]
        assert stored.done and len(stored.chunks) == len(VALUES)
        assert all(c[4:8] == (b"encr" if encrypted else b"devl") for c in stored.chunks)
        read = streams_js(sdk, "read", "vercel", run_id, "from-python", env=env)
        assert read["values"] == EXPECTED

        written = streams_js(sdk, "write", "vercel", run_id, "from-sdk", env=env)

        async def read_back() -> tuple[list[Any], bool]:
            try:
                return await world.streams.read_values(written["name"], run_id)
            finally:
                await world.close()

        values, done = asyncio.run(read_back())
        assert done and tagged(values) == EXPECTED
        if encrypted:  # without the key the same stream is shown encrypted, not an error
            plain = VercelWorld(VercelConfig.from_env({"VERCEL_TOKEN": fake.token, "VERCEL_WORKFLOW_SERVER_URL": url}))
            hidden, _ = asyncio.run(_read_and_close(plain, written["name"], run_id))
            assert len(hidden) == len(VALUES) and all(isinstance(v, Encrypted) for v in hidden)
        else:
            assert [c for c in fake.streams[written["name"]].chunks] == [encode_chunk(v) for v in VALUES]
    finally:
        stop()


async def _read_and_close(world: VercelWorld, name: str, run_id: str) -> tuple[list[Any], bool]:
    try:
        return await world.streams.read_values(name, run_id)
    finally:
        await world.close()


def test_vercel_workflow_local_world_reads_our_frames_with_its_read_stream(tmp_path, monkeypatch):
    """vercel-workflow (the Python SDK) reads our frames through its own local world and
    ``read_stream``. It cannot read a ``Date`` or a ``Uint8Array`` chunk in the TS SDK's reducer form
    (``["Date", <ref>]``): it fails on the TS SDK's own chunks exactly as on ours (an upstream gap)."""
    world_mod = pytest.importorskip("vercel.workflow._internal.world")
    local_mod = pytest.importorskip("vercel.workflow._internal.worlds.local")
    from vercel.workflow import read_stream

    monkeypatch.setenv("WORKFLOW_LOCAL_DATA_DIR", str(tmp_path / "pydata"))
    readable = [v for v in VALUES if not isinstance(v, (bytes, datetime))]
    run_id = f"wrun_{ULID()}"

    async def scenario() -> tuple[list[Any], list[str]]:
        world = local_mod.LocalWorld()
        world_mod.set_world(world)
        try:
            name = _stream_name(run_id, "ours")
            await world.streams_write_multi(run_id, name, [encode_chunk(v) for v in readable])
            await world.streams_close(run_id, name)
            values = [v async for v in read_stream(run_id, name)]
            failures = []
            for label, chunk in (("ours", encode_chunk(VALUES[4])), ("sdk", bytes.fromhex(SDK_BYTES_CHUNK))):
                other = _stream_name(run_id, label + "-bytes")
                await world.streams_write(run_id, other, chunk)
                await world.streams_close(run_id, other)
                try:
                    [v async for v in read_stream(run_id, other)]
                except Exception as error:
                    failures.append(f"{type(error).__name__}: {str(error).split(': ', 1)[-1]}")
            return values, failures
        finally:
            world_mod.set_world(None)

    values, failures = asyncio.run(scenario())
    assert values == readable
    assert len(failures) == 2 and failures[0] == failures[1]  # the same error for the SDK's chunk as for ours


#: a Uint8Array chunk the TS SDK wrote in the harness run (``["Uint8Array",1],"dHh0LTAK"``)
SDK_BYTES_CHUNK = "000000216465766c5b5b2255696e74384172726179222c315d2c22644868304c54414b225d"


# ---- the decoder on its own -------------------------------------------------------------------
def test_frames_decode_however_the_transport_cuts_them():
    stream = b"".join(encode_chunk(v) for v in VALUES)
    for cut in range(1, 40):  # every read size, so a cut falls in every header and body
        decoder = StreamDecoder()
        out: list[Any] = []
        for at in range(0, len(stream), cut):
            out.extend(decoder.feed(stream[at : at + cut]))
        assert tagged(out) == EXPECTED and decoder.pending == 0
    decoder = StreamDecoder()
    assert tagged(decoder.feed(stream[:-3])) == EXPECTED[:-1] and decoder.pending > 0  # cut mid-frame


def test_legacy_newline_text_opaque_and_encrypted_chunks_never_stop_a_read():
    assert decode_chunks(b'["a"]\n[1]\n') == ["a", 1]  # pre-framing SDKs: newline-delimited devalue
    odd = frame(b"zzzz" + b"whatever")
    key = DeploymentKey(os.urandom(32), "prj").for_run("wrun_x")
    sealed = encode_chunk({"secret": 1}, encrypt=key.encrypt)
    values = decode_chunks([encode_chunk("before"), odd, sealed, encode_chunk("after")])
    assert values[0] == "before" and values[-1] == "after"
    assert isinstance(values[1], Opaque) and values[1].format == "zzzz"
    assert isinstance(values[2], Encrypted)
    assert decode_chunks(sealed, decrypt=key.decrypt) == [{"secret": 1}]
    wrong = DeploymentKey(os.urandom(32), "prj").for_run("wrun_x")
    decoder = StreamDecoder(decrypt=wrong.decrypt)
    assert isinstance(decoder.feed(sealed)[0], Encrypted) and "authentication failed" in decoder.errors[0]


def test_vercel_batches_and_refusals():
    chunks = [encode_chunk(v) for v in VALUES]
    body = vercel_multi_body(chunks)
    assert split_multi_chunks(body) == chunks
    assert vercel_multi_body(["héllo"]) == struct.pack(">I", 6) + "héllo".encode()
    with pytest.raises(StreamFormatError):
        split_multi_chunks(body[:-1])
    with pytest.raises(StreamFormatError):
        devalue_stringify({"__proto__": 1})
    with pytest.raises(StreamFormatError):
        devalue_stringify(object())
    assert devalue_stringify(UNDEFINED) == "-1" and devalue_stringify(math.nan) == "-3"
    shared = [1]
    assert devalue_stringify([shared, shared]) == "[[1,1],[2],1]"  # one object, one slot, as devalue
