"""The collector when its storage fails: a full disk (a real 3 MiB tmpfs, filled), a read-only store
(a real read-only file, the process without the capability to override it), a corrupt store at
start-up, and one request the store cannot take inside a group commit of many.

A real ``wft serve`` answers real clients (the OTel exporter's encoding over HTTP); what is on
disk is read back through SQLite from this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from collector.otlp import PROTOBUF, decode_request, records_from
from collector.store import Store
from collector.writer import PROBE_EVERY_S, Batch, StoreUnavailable, Writer, storage_fault

from .conftest import http
from .sdk_spans import RUN, make_sdk_spans

PB = {"Content-Type": "application/x-protobuf"}


def _big_request(index: int, size: int = 60_000) -> tuple[bytes, set[str]]:
    """Real SDK spans with large attributes (a write that needs new pages), and their span ids. The
    attributes are random: the store compresses what it keeps, and a run of one letter takes no room."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "faults"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("faults")
    with tracer.start_as_current_span("WORKFLOW faults", attributes={"workflow.run.id": f"{RUN}{index}"}):
        for i in range(3):
            payload = f"{index}-{i}-" + os.urandom(size // 2).hex()
            with tracer.start_as_current_span(f"STEP {i}", attributes={"payload": payload}):
                pass
    provider.shutdown()
    spans = memory.get_finished_spans()
    return encode_spans(spans).SerializeToString(), {f"{s.context.span_id:016x}" for s in spans}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if text in line]


def _serve(store: Path, log: Path, *, prefix: tuple[str, ...] = ()) -> Served:
    port = _free_port()
    args = [*prefix, sys.executable, "-m", "telemetry", "serve", "--port", str(port), "--store", str(store)]
    args += ["--no-world", "--retention-age", "0", "--retention-size", "0"]
    with log.open("w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"wft serve exited: {log.read_text()}")
        try:
            if http("GET", f"{url}/healthz", timeout=1)[0] == 200:
                return Served(process, url, log)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"wft serve did not start: {log.read_text()}")


def _stop(served: Served) -> None:
    served.process.terminate()
    served.process.wait(30)


def _span_ids(store: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT span_id FROM spans")}
    finally:
        conn.close()


def _integrity(store: Path) -> str:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def _post_all(url: str, bodies: list[bytes]) -> list[tuple[int, dict, bytes]]:
    """The bodies posted at once, from as many clients."""
    results: list[tuple[int, dict, bytes]] = [(0, {}, b"")] * len(bodies)

    def post(i: int) -> None:
        results[i] = http("POST", f"{url}/v1/traces", bodies[i], PB)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


# ---- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB filesystem (tmpfs) to fill; needs root to mount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk: Path) -> Path:
    """Fill the disk to the last byte (what is left of it is nothing)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0")
    except OSError:
        pass
    os.close(fd)
    return filler


def test_a_full_disk_is_503_with_retry_after_writes_nothing_and_recovers(small_disk, tmp_path):
    store = small_disk / "store.sqlite3"
    served = _serve(store, tmp_path / "serve.log")
    try:
        first, first_ids = _big_request(0, size=1000)
        assert http("POST", f"{served.url}/v1/traces", first, PB)[0] == 200
        filler = _fill(small_disk)
        requests = [_big_request(i) for i in range(1, 7)]
        refused = _post_all(served.url, [body for body, _ in requests])
        assert http("GET", f"{served.url}/api/runs")[0] == 200  # reads go on
        refused_again = _post_all(served.url, [body for body, _ in requests[:2]])
        on_disk_while_full = _span_ids(store)
        integrity_while_full = _integrity(store)
        time.sleep(PROBE_EVERY_S + 1.5)  # idle, still full: the writer's probe must not call it well
        health_while_full = http("GET", f"{served.url}/healthz")
        filler.unlink()  # space returns: a probe finds out with no request
        deadline = time.monotonic() + 30
        while (healthy := http("GET", f"{served.url}/healthz"))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        accepted = _post_all(served.url, [body for body, _ in requests])
        alive = served.process.poll() is None
    finally:
        _stop(served)
    for status, headers, body in refused + refused_again:
        assert status == 503, (status, body)
        assert int(headers["Retry-After"]) > 0 and b"full" in body
    assert on_disk_while_full == first_ids  # nothing partial of the refused requests
    assert integrity_while_full == "ok"
    assert health_while_full[0] == 503 and json.loads(health_while_full[2])["status"] == "unavailable"
    assert healthy[0] == 200
    assert [status for status, _, _ in accepted] == [200] * len(requests) and alive
    assert _span_ids(store) == first_ids.union(*(ids for _, ids in requests))
    assert len(served.lines("store unavailable")) == 1  # one line for the whole episode
    assert len(served.lines("store writable again")) == 1
    assert not served.lines("Traceback")


# ---- a read-only store --------------------------------------------------------------------------------


def _without_override() -> tuple[str, ...]:
    """How to start a process that file modes bind: as root, without CAP_DAC_OVERRIDE."""
    if os.geteuid() != 0:
        return ()
    if subprocess.run(["setpriv", "--version"], capture_output=True).returncode != 0:
        pytest.skip("setpriv is needed to run a root process that file modes bind")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


def test_a_read_only_store_is_503_with_retry_after_and_recovers(tmp_path):
    """The store file read-only (SQLite makes its -shm so too). Once the user makes them writable
    the writer's next connection writes. (A page read meanwhile would hold SQLite's shared memory
    open read-only in this process until a restart, which is why the read comes last here.)"""
    prefix = _without_override()
    store = tmp_path / "store.sqlite3"
    Store(store)  # an existing store, closed
    os.chmod(store, 0o444)
    body, ids = _big_request(1, size=100)
    served = _serve(store, tmp_path / "serve.log", prefix=prefix)
    try:
        refused = [http("POST", f"{served.url}/v1/traces", body, PB) for _ in range(3)]
        unhealthy = http("GET", f"{served.url}/healthz")
        for path in tmp_path.glob("store.sqlite3*"):
            os.chmod(path, 0o600)
        # no request comes: the writer tries the store itself, and a probe sees it well again
        deadline = time.monotonic() + 30
        while (healthy := http("GET", f"{served.url}/healthz"))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        accepted = http("POST", f"{served.url}/v1/traces", body, PB)
        listed = http("GET", f"{served.url}/api/runs")
    finally:
        _stop(served)
    for status, headers, answer in refused:
        assert status == 503 and int(headers["Retry-After"]) > 0 and b"read-only" in answer, (status, answer)
    assert accepted[0] == 200 and listed[0] == 200 and RUN in listed[2].decode()
    # a probe sees it as ingest does: unavailable while the store cannot be written, then well again
    assert unhealthy[0] == 503 and json.loads(unhealthy[2])["status"] == "unavailable"
    assert "read-only" in json.loads(unhealthy[2])["checks"]["store"]["reason"]  # no token: the reasons are told
    assert healthy[0] == 200 and json.loads(healthy[2]) == {
        "ok": True,
        "status": "ok",
        "checks": {"store": {"ok": True}},
    }
    assert _span_ids(store) == ids
    assert len(served.lines("store unavailable")) == 1 and len(served.lines("store writable again")) == 1


# ---- a corrupt store at start-up ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a database, it is text\n" * 200,
        b"SQLite format 3\x00" + b"\xff" * 4000,  # the magic, then garbage
    ],
)
def test_a_corrupt_store_at_startup_is_one_line_naming_the_file(tmp_path, content):
    store = tmp_path / "store.sqlite3"
    store.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "telemetry", "serve", "--port", "0", "--store", str(store), "--no-world"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert str(store) in lines[0] and "Traceback" not in result.stderr
    assert store.read_bytes() == content  # left as it was, for the user to look at


# ---- one request the store cannot take ------------------------------------------------------------------


def _records(count: int = 1):
    return records_from(decode_request(encode_spans(make_sdk_spans(count)).SerializeToString(), PROTOBUF))[0]


def test_a_batch_the_store_refuses_fails_only_its_own_request(tmp_path):
    """One poisonous batch among forty concurrent ones, in the same group commits: the poison is what
    the issue found (a time past 2^63 reaching SQLite: OverflowError), here handed to the writer
    directly since the edge now refuses it before."""
    store = Store(tmp_path / "store.sqlite3")
    writer = Writer(store)
    poison = Batch(spans=_records(1))
    poison.spans[0].start_ns = 2**63
    valid = [Batch(spans=_records(1)) for _ in range(39)]

    async def go():
        tasks = [asyncio.create_task(writer.submit(b)) for b in [*valid[:20], poison, *valid[20:]]]
        await asyncio.sleep(0.05)  # all queued: one group
        writer.start()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(go())
    finally:
        writer.stop()
    assert isinstance(results[20], OverflowError)
    assert [r for i, r in enumerate(results) if i != 20] == [None] * 39
    assert _span_ids(store.path) == {r.span_id for b in valid for r in b.spans}
    assert writer.commits == 1  # the rest still went in one commit


def _error_of(sql: str, *setup: str) -> BaseException:
    conn = sqlite3.connect(":memory:")
    for statement in setup:
        conn.execute(statement)
    try:
        conn.execute(sql)
    except sqlite3.Error as error:
        return error
    finally:
        conn.close()
    raise AssertionError(f"{sql} did not fail")


def test_storage_faults_are_told_from_data_faults():
    full = _error_of(
        "INSERT INTO t SELECT randomblob(4096) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n"
        " WHERE i < 100) SELECT i FROM n)",
        "CREATE TABLE t (x)",
        "PRAGMA max_page_count = 10",
    )  # real SQLITE_FULL, from SQLite itself
    assert isinstance(storage_fault(full), StoreUnavailable) and "full" in str(storage_fault(full))
    assert storage_fault(OSError(28, "No space left on device")) is not None  # ENOSPC (the spool)
    refused = _error_of("INSERT INTO t VALUES (NULL)", "CREATE TABLE t (x NOT NULL)")
    assert storage_fault(refused) is None  # the data's fault: only its request fails
    assert storage_fault(OverflowError("Python int too large to convert to SQLite INTEGER")) is None
