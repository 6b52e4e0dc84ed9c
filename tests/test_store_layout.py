"""collector.store's layout (span blobs + one index row per span), on real harness spans: summaries
folded batch by batch equal a from-scratch recomputation, a span sent twice leaves one copy and the
counts as they were, retention drops whole blobs and nothing dangles, a store of the previous layout
is migrated on open, a ``wft serve`` killed with SIGKILL mid-ingest reopens consistent with every
acknowledged span in it, JSON blobs read back what the CBOR blobs of earlier stores read, and run
totals folded apart and merged equal those folded span by span."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import pickle
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zstandard
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.otlp import SpanRecord
from collector.queries import run_view, span_detail, stitched_spans
from collector.store import LAYOUT, Store, StoreLayoutError, decode_blob, encode_blob, prepare_spans
from collector.summaries import RunFacts, SpanFacts, StepFacts, WorldView, summarize_run
from telemetry.runtrace import build_run_trace

from .conftest import http
from .world_spans import RunLog, commit

PB = {"Content-Type": "application/x-protobuf"}
SUMMARY = ("workflow_name", "status", "start_ns", "end_ns", "steps", "errors", "benign", "trace_id")


@pytest.fixture(scope="module")
def logs(harness_out: Path) -> list[RunLog]:
    """Every run of the real harness's world-local data, with its whole event log."""
    data = harness_out / "local-data"
    return [RunLog(data, p.stem) for p in sorted((data / "runs").glob("*.json"))]


def copy_of(records: list[SpanRecord], k: int) -> list[SpanRecord]:
    """Copy ``k`` of real spans: fresh trace ids and run id, everything else as the SDK made it."""
    out = []
    for r in records:
        attributes = dict(r.attributes)
        if isinstance(attributes.get("workflow.run.id"), str):
            attributes["workflow.run.id"] = f"{attributes['workflow.run.id']}-c{k}"
        trace = hashlib.blake2b(f"{r.trace_id}/{k}".encode(), digest_size=16).hexdigest()
        out.append(dataclasses.replace(r, trace_id=trace, attributes=attributes))
    return out


def facts(records: list[SpanRecord]) -> list[SpanFacts]:
    return [
        SpanFacts.from_attributes(r.trace_id, r.span_id, r.start_ns, r.end_ns, r.status_code, r.benign, r.attributes)
        for r in records
    ]


def runs_row(store: Store, run_id: str) -> tuple[object, ...]:
    conn = store.connect()
    try:
        row = conn.execute(f"SELECT {', '.join(SUMMARY)} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return tuple(row)
    finally:
        conn.close()


def expected_row(records: list[SpanRecord], run_id: str, world: WorldView | None = None) -> tuple[object, ...]:
    s = summarize_run(run_id, facts(records), world)
    return (s.workflow_name, s.status, s.start_ns, s.end_ns, s.steps, s.errors, s.benign, s.trace_id)


def consistent(store: Store) -> dict[str, int]:
    """Check the layout's invariants; returns counts. Every index row points into a blob that holds
    that very span; a blob's dead count is its spans no index row points at; no blob is all dead."""
    conn = store.connect()
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LAYOUT
        pointed: dict[int, set[int]] = {}
        for trace_id, span_id, blob_id, pos in conn.execute("SELECT trace_id, span_id, blob_id, pos FROM span_index"):
            pointed.setdefault(blob_id, set()).add(pos)
            data = conn.execute("SELECT data FROM blobs WHERE blob_id = ?", (blob_id,)).fetchone()
            assert data is not None, f"index row {trace_id}/{span_id} points at missing blob {blob_id}"
        for blob_id, run_id, spans, dead, data in conn.execute("SELECT blob_id, run_id, spans, dead, data FROM blobs"):
            items = decode_blob(data, run_id, 0)
            assert len(items) == spans
            live = pointed.get(blob_id, set())
            assert spans - len(live) == dead and live, (blob_id, spans, dead, live)
            for pos in live:
                key = conn.execute(
                    "SELECT 1 FROM span_index WHERE trace_id = ? AND span_id = ? AND blob_id = ? AND pos = ?",
                    (items[pos][0], items[pos][1], blob_id, pos),
                ).fetchone()
                assert key is not None
                assert all(i[9] == run_id for i in items)  # a blob holds one run's spans
        return {
            "spans": conn.execute("SELECT count(*) FROM span_index").fetchone()[0],
            "blobs": conn.execute("SELECT count(*) FROM blobs").fetchone()[0],
        }
    finally:
        conn.close()


# ---- incremental summaries == from scratch ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_folding_batches_equals_summarizing_everything(logs, seed):
    """fold(batches) == summarize(all), on every real run and on prefixes of its log (a live run), in
    random batches and random order, in the pure fold and through the store."""
    rng = random.Random(seed)
    for log in logs:
        cut = rng.randrange(len(log.events)) if seed % 2 else None
        records = log.records(cut)
        if not records:
            continue
        shuffled = records[:]
        rng.shuffle(shuffled)
        cuts = sorted(rng.sample(range(1, len(shuffled)), min(3, len(shuffled) - 1))) if len(shuffled) > 1 else []
        batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
        folded, steps = RunFacts(), dict[str, StepFacts]()
        for batch in batches:
            folded = RunFacts.from_json(folded.to_json())  # as the store keeps it between commits
            folded.fold(facts(batch), steps)
        world = WorldView("running", None, None) if cut is not None else None
        assert folded.summary(log.run_id, world) == summarize_run(log.run_id, facts(records), world)


def test_the_store_folds_batches_to_the_recomputed_row(logs, tmp_path):
    """Many real runs, their spans in random batches mixing runs, committed one by one: each run's
    row equals summarize_run over its spans, and equals what a rebuild from the stored spans says."""
    rng = random.Random(7)
    every = [r for log in logs for k in range(3) for r in copy_of(log.records(), k)]
    rng.shuffle(every)
    store = Store(tmp_path / "store.sqlite3")
    at = 0
    while at < len(every):
        size = rng.randrange(1, 60)
        commit(store, every[at : at + size])
        at += size
    by_run: dict[str, list[SpanRecord]] = {}
    for r in every:
        by_run.setdefault(str(r.run_id), []).append(r)
    folded = {run_id: runs_row(store, run_id) for run_id in by_run}
    for run_id, records in by_run.items():
        assert folded[run_id] == expected_row(records, run_id)
    conn = store.connect()
    conn.execute("BEGIN IMMEDIATE")
    store.refresh_runs(conn, list(by_run))
    conn.execute("COMMIT")
    conn.close()
    assert {run_id: runs_row(store, run_id) for run_id in by_run} == folded
    assert consistent(store)["spans"] == len(every)


# ---- dedup --------------------------------------------------------------------------------------------


def test_the_same_real_spans_sent_twice_leave_one_copy_and_the_counts(logs, tmp_path):
    store = Store(tmp_path / "store.sqlite3")
    records = [r for log in logs for r in log.records()]
    commit(store, records, [e for log in logs for e in log.event_rows()], [log.info() for log in logs])
    rows = {log.run_id: runs_row(store, log.run_id) for log in logs}
    before = consistent(store)
    conn = store.connect()
    pages = {log.run_id: run_view(conn, log.run_id)["spans"] for log in logs}
    commit(store, records)  # sent again whole
    assert consistent(store) == before  # one copy each; the first copies' blobs (all dead) are gone
    commit(store, records[::2] + records[::3])  # and again in pieces, twice within one request
    assert consistent(store)["spans"] == before["spans"]
    assert {log.run_id: runs_row(store, log.run_id) for log in logs} == rows
    assert {log.run_id: run_view(conn, log.run_id)["spans"] for log in logs} == pages
    assert rows[logs[0].run_id][4] > 0  # the run has steps: the counts compared are not all zero
    conn.close()


def test_a_span_sent_again_with_other_content_is_the_last_write(logs, tmp_path):
    """Last write wins: the index points at the new copy, the page shows it, the run's row is
    rebuilt to the new facts (a status that changed is a summary fact)."""
    store = Store(tmp_path / "store.sqlite3")
    log = next(log for log in logs if any(r.attributes.get("workflow.span.kind") == "attempt" for r in log.records()))
    records = log.records()
    commit(store, records)
    attempt = next(r for r in records if r.attributes.get("workflow.span.kind") == "attempt")
    failed = dataclasses.replace(attempt, status_code=2, status_message="re-sent as failed", name="changed")
    commit(store, [failed])
    conn = store.connect()
    shown = span_detail(conn, failed.trace_id, failed.span_id)
    assert shown is not None and shown["name"] == "changed" and shown["status"]["code"] == 2
    names = [s["o_name"] for s in stitched_spans(conn, log.run_id) if s["o_span"] == attempt.span_id]
    assert names == ["changed"]
    conn.close()
    now = [failed if r is attempt else r for r in records]
    assert runs_row(store, log.run_id) == expected_row(now, log.run_id)
    assert runs_row(store, log.run_id)[5] >= 1  # the error the new copy brought is counted
    assert consistent(store)["spans"] == len(records)


# ---- retention ----------------------------------------------------------------------------------------


def test_retention_drops_whole_blobs_by_age_and_by_size(logs, tmp_path):
    store = Store(tmp_path / "store.sqlite3")
    old = [r for log in logs for r in copy_of(log.records(), 1)]
    commit(store, old, [], [])
    conn = store.connect()
    conn.execute("UPDATE blobs SET received_ns = received_ns - 3600 * 1000000000")  # received an hour ago
    conn.execute("UPDATE runs SET updated_ns = updated_ns - 3600 * 1000000000")
    recent = [r for log in logs for r in copy_of(log.records(), 2)]
    commit(store, recent)
    assert consistent(store)["spans"] == len(old) + len(recent)
    conn.execute("BEGIN IMMEDIATE")
    dropped = store.enforce_retention(conn, max_age_s=60, max_bytes=None)
    conn.execute("COMMIT")
    assert dropped == len(old)
    left = {r[0] for r in conn.execute("SELECT run_id FROM runs")}
    assert left == {str(r.run_id) for r in recent}  # the old runs went with their spans
    assert consistent(store)["spans"] == len(recent)
    # by size: the oldest blobs first, down to the bound
    for k in range(3, 12):
        commit(store, [r for log in logs for r in copy_of(log.records(), k)])
    size = store.used_bytes(conn)
    conn.execute("BEGIN IMMEDIATE")
    dropped = store.enforce_retention(conn, max_age_s=None, max_bytes=size // 2)
    conn.execute("COMMIT")
    counts = consistent(store)
    assert dropped > 0 and counts["spans"] > 0 and store.used_bytes(conn) <= size // 2
    first_left = conn.execute("SELECT min(blob_id) FROM blobs").fetchone()[0]
    assert conn.execute("SELECT count(*) FROM span_index WHERE blob_id < ?", (first_left,)).fetchone()[0] == 0
    conn.close()


# ---- migration ------------------------------------------------------------------------------------------

#: the previous layout, as ``collector/store.py`` created it before span blobs (commit e7d0cd9)
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
  trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT NOT NULL, name TEXT NOT NULL,
  kind INTEGER NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
  status_code INTEGER NOT NULL, status_message TEXT NOT NULL, run_id TEXT, service TEXT, scope TEXT,
  source TEXT NOT NULL, benign INTEGER NOT NULL DEFAULT 0, attributes TEXT NOT NULL, events TEXT NOT NULL,
  links TEXT NOT NULL, resource TEXT NOT NULL, received_ns INTEGER NOT NULL,
  PRIMARY KEY (trace_id, span_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS spans_by_run ON spans (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS spans_by_received ON spans (received_ns);
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, workflow_name TEXT, status TEXT, start_ns INTEGER, end_ns INTEGER,
  steps INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, benign INTEGER NOT NULL DEFAULT 0,
  trace_id TEXT, world_status TEXT, updated_ns INTEGER NOT NULL, waiting TEXT, events_cursor TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (start_ns DESC, run_id DESC);
CREATE TABLE IF NOT EXISTS run_events (
  run_id TEXT NOT NULL, event_id TEXT NOT NULL, event_type TEXT NOT NULL, correlation_id TEXT,
  created_ns INTEGER NOT NULL, data TEXT, PRIMARY KEY (run_id, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sentry_drops (
  run_id TEXT NOT NULL, rule TEXT NOT NULL, count INTEGER NOT NULL, last_message TEXT, last_ns INTEGER NOT NULL,
  PRIMARY KEY (run_id, rule)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_waiting ON runs (coalesce(start_ns, 0) DESC, run_id DESC) WHERE waiting IS NOT NULL;
"""


def _old_store(path: Path, logs: list[RunLog]) -> None:
    """A store written by the previous code path's SQL: a wide row of JSON columns per span, the runs
    rows the world's run info made, the events."""
    import json

    def dumps(value: object) -> str:
        return json.dumps(value, separators=(",", ":"), default=str)

    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    now = time.time_ns()
    for log in logs:
        conn.executemany(
            "INSERT OR REPLACE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    s.trace_id,
                    s.span_id,
                    s.parent_span_id,
                    s.name,
                    s.kind,
                    s.start_ns,
                    s.end_ns,
                    s.status_code,
                    s.status_message,
                    s.run_id,
                    s.resource.get("service.name"),
                    s.scope,
                    s.source,
                    int(s.benign),
                    dumps(s.attributes),
                    dumps(s.events) if s.events else "[]",
                    dumps(s.links) if s.links else "[]",
                    dumps(s.resource),
                    now,
                )
                for s in log.records()
            ],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO run_events VALUES (?,?,?,?,?,?)",
            [(e.run_id, e.event_id, e.event_type, e.correlation_id, e.created_ns, e.data) for e in log.event_rows()],
        )
        run = log.info()
        conn.execute(
            "INSERT INTO runs (run_id, workflow_name, status, start_ns, world_status, updated_ns)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET world_status=excluded.world_status,"
            " workflow_name=coalesce(runs.workflow_name, excluded.workflow_name),"
            " start_ns=min(coalesce(runs.start_ns, excluded.start_ns), excluded.start_ns)",
            (run.run_id, run.workflow_name, run.status, run.created_ns, run.status, now),
        )
    conn.commit()
    conn.close()


def test_a_store_of_the_previous_layout_is_migrated_on_open(logs, tmp_path, caplog):
    path = tmp_path / "store.sqlite3"
    _old_store(path, logs)
    with caplog.at_level(logging.INFO, logger="collector.store"):
        store = Store(path)
    lines = [r.getMessage() for r in caplog.records if r.name == "collector.store"]
    total = sum(len(log.records()) for log in logs)
    assert len(lines) == 1 and f"{total} spans, {len(logs)} runs" in lines[0] and "migrated to layout 2" in lines[0]
    assert consistent(store)["spans"] == total
    conn = store.connect()
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'spans_v1'").fetchone()[0] == 0
    for log in logs:
        page = run_view(conn, log.run_id)
        assert page is not None and len(page["events"]) == len(log.events)
        assert sorted(s["spanId"] for s in page["spans"]) == sorted(r.span_id for r in log.records())
        world = WorldView(log.info().status, log.info().workflow_name, log.info().created_ns)
        assert runs_row(store, log.run_id) == expected_row(log.records(), log.run_id, world)
    conn.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="collector.store"):
        Store(path)  # opened again: nothing to do
    assert not [r for r in caplog.records if r.name == "collector.store"]


def test_a_migration_that_fails_leaves_the_previous_layout_whole(logs, tmp_path):
    path = tmp_path / "store.sqlite3"
    _old_store(path, logs[:2])
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
    conn.execute(  # one row the migration cannot read, after others it has already moved
        "UPDATE spans SET attributes = 'not json' WHERE (trace_id, span_id) ="
        " (SELECT trace_id, span_id FROM spans ORDER BY trace_id DESC, span_id DESC LIMIT 1)"
    )
    conn.commit()
    with pytest.raises(StoreLayoutError) as failed:
        Store(path)
    assert "migrating" in str(failed.value) and "unchanged" in str(failed.value)
    assert len(str(failed.value).splitlines()) == 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    assert "span_index" not in tables and "blobs" not in tables
    assert conn.execute("SELECT count(*) FROM spans").fetchone()[0] == rows
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    conn.close()


# ---- a crash during a write ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bodies(logs: list[RunLog], copies: int) -> list[tuple[bytes, set[tuple[str, str]]]]:
    """OTLP requests of real spans (one run copy each), with the (trace id, span id)s in each."""
    out = []
    for k in range(copies):
        for log in logs:
            trace = build_run_trace(log.run_id, log.events, log.run)
            if not trace.spans:
                continue
            request = ExportTraceServiceRequest()
            request.CopyFrom(encode_spans(trace.spans))
            keys = set()
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        span.trace_id = hashlib.blake2b(
                            span.trace_id + bytes([k % 256, k // 256]), digest_size=16
                        ).digest()
                        for kv in span.attributes:
                            if kv.key == "workflow.run.id":
                                kv.value.string_value = f"{kv.value.string_value}-c{k}"
                        keys.add((span.trace_id.hex(), span.span_id.hex()))
            out.append((request.SerializeToString(), keys))
    return out


def test_kill_9_mid_ingest_keeps_every_acknowledged_span(logs, tmp_path):
    store_path = tmp_path / "store.sqlite3"
    port = _free_port()
    log_path = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "telemetry", "serve", "--no-world", "--port", str(port), "--store", str(store_path)]
    with log_path.open("w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if http("GET", f"{url}/healthz", timeout=1)[0] == 200:
                break
        except OSError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.05)
    bodies = _bodies(logs, 60)
    acknowledged: set[tuple[str, str]] = set()
    lock = threading.Lock()
    queue = list(bodies)

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                body, keys = queue.pop()
            try:
                status = http("POST", f"{url}/v1/traces", body, PB, timeout=10)[0]
            except OSError:
                return  # the server is gone
            if status == 200:
                with lock:
                    acknowledged.update(keys)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    while len(acknowledged) < 200 and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # mid-ingest: requests in flight, a group commit likely under way
    process.wait(10)
    for t in threads:
        t.join(30)
    assert acknowledged and queue, "the kill came after the load ended: nothing was cut"
    store = Store(store_path)  # reopen: WAL recovery, then the layout is checked
    consistent(store)
    conn = store.connect()
    stored = {(r[0], r[1]) for r in conn.execute("SELECT trace_id, span_id FROM span_index")}
    assert acknowledged <= stored
    # each run's row is what its stored spans say (the fold of each committed batch, nothing half)
    run_ids = [r[0] for r in conn.execute("SELECT run_id FROM runs")]
    folded = {run_id: runs_row(store, run_id) for run_id in run_ids}
    conn.execute("BEGIN IMMEDIATE")
    store.refresh_runs(conn, run_ids)
    conn.execute("COMMIT")
    assert {run_id: runs_row(store, run_id) for run_id in run_ids} == folded
    conn.close()


def test_paused_gc_resumes_collection_when_the_last_reader_is_done():
    import gc

    from collector.store import paused_gc

    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def reader() -> None:
        with paused_gc():
            inside.set()
            release.wait(10)

    other = threading.Thread(target=reader)
    other.start()
    inside.wait(10)
    with paused_gc():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other reader is still decoding
    release.set()
    other.join(10)
    assert gc.isenabled()


def test_an_empty_run_id_names_no_run(logs, tmp_path):
    """A span whose workflow.run.id is "" is stored (with no run), and makes no run row: the runs
    list would link a page that cannot exist (``/api/runs/``). The fuzzer found this."""
    store = Store(tmp_path / "store.sqlite3")
    span = logs[0].records()[0]
    nameless = dataclasses.replace(span, attributes={**span.attributes, "workflow.run.id": ""})
    commit(store, [nameless])
    conn = store.connect()
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    assert [tuple(r) for r in conn.execute("SELECT run_id FROM span_index")] == [(None,)]
    assert span_detail(conn, span.trace_id, span.span_id) is not None
    conn.close()


# ---- blob formats, folded batches ---------------------------------------------------------------------


def test_json_blobs_read_back_what_cbor_blobs_read(logs):
    """New blobs are JSON (orjson), the blobs of stores written before are CBOR: both read back the
    same spans, values, types and attribute order; what JSON cannot hold exactly (a NaN, an infinity,
    an int past 64 bits: never in a span validated at the edge) is written as CBOR."""
    records = [r for log in logs for r in log.records(source="otlp")]
    json_blob, cbor_blob = encode_blob(records), encode_blob(records, cbor=True)
    assert json_blob != cbor_blob
    assert repr(decode_blob(json_blob, "wrun_x", 5)) == repr(decode_blob(cbor_blob, "wrun_x", 5))
    odd = dataclasses.replace(
        records[0], attributes={"nan": math.nan, "big": 2**70, "inf": "Infinity", "f": 0.1, "null": None}
    )
    blob = encode_blob([odd])
    assert blob == encode_blob([odd], cbor=True)  # fell back to CBOR
    (span,) = decode_blob(blob, None, 0)
    attributes = span[14]
    assert math.isnan(attributes.pop("nan")) and attributes == {"big": 2**70, "inf": "Infinity", "f": 0.1, "null": None}
    for value in (math.inf, -math.inf, 2**64):
        blob = encode_blob([dataclasses.replace(records[0], attributes={"v": value, "n": None})])
        assert decode_blob(blob, None, 0)[0][14] == {"v": value, "n": None}
    plain = dataclasses.replace(records[0], attributes={"n": None, "text": "null", "f": 1.5})
    assert bytes(zstandard.ZstdDecompressor().decompress(encode_blob([plain])))[:1] == b"["  # a null alone: JSON


def test_a_store_with_cbor_blobs_reads_like_one_with_json_blobs(logs, tmp_path):
    """An existing layout-2 store (its blobs CBOR, as every blob was before) needs no migration:
    the same run pages, and spans written after into the same store mix with the old ones."""
    old, new = Store(tmp_path / "old.sqlite3"), Store(tmp_path / "new.sqlite3")
    first, rest = logs[: len(logs) // 2], logs[len(logs) // 2 :]
    for log in first:
        commit(old, prepare_spans(log.records(), cbor=True), log.event_rows(), [log.info()])
        commit(new, prepare_spans(log.records()), log.event_rows(), [log.info()])
    for log in rest:  # the old store goes on with JSON blobs
        for store in (old, new):
            commit(store, log.records(), log.event_rows(), [log.info()])
    formats = set()
    for store in (old, new):
        conn = store.connect()
        formats |= {
            bytes(zstandard.ZstdDecompressor().decompress(d[0]))[:1] for d in conn.execute("SELECT data FROM blobs")
        }
        conn.close()
    assert formats == {b"[", b"\x82"}  # JSON and CBOR blobs were both read below
    a, b = old.connect(), new.connect()
    for log in logs:
        assert run_view(a, log.run_id) == run_view(b, log.run_id)
        assert runs_row(old, log.run_id) == runs_row(new, log.run_id)
    a.close()
    b.close()


@pytest.mark.parametrize("seed", range(4))
def test_merging_folded_batches_equals_folding_them(logs, seed):
    """``RunFacts.merge`` of batches folded from nothing (what a decoder process sends) gives what
    folding the spans one by one gives, totals and step rows, in any split and order."""
    rng = random.Random(seed)
    for log in logs:
        records = log.records(rng.randrange(len(log.events)) if seed % 2 else None)
        if len(records) < 2:
            continue
        rng.shuffle(records)
        cuts = sorted(rng.sample(range(1, len(records)), min(4, len(records) - 1)))
        batches = [records[a:b] for a, b in zip([0, *cuts], [*cuts, len(records)], strict=True)]
        folded, folded_steps = RunFacts(), dict[str, StepFacts]()
        merged, merged_steps = RunFacts(), dict[str, StepFacts]()
        for batch in batches:
            folded.fold(facts(batch), folded_steps)
            part, part_steps = RunFacts(), dict[str, StepFacts]()
            part.fold(facts(batch), part_steps)
            kept = (part.to_json(), {k: dataclasses.replace(v) for k, v in part_steps.items()})
            merged = RunFacts.from_json(merged.to_json())  # as the store keeps it between commits
            merged.merge(part, part_steps, merged_steps)
            assert (part.to_json(), part_steps) == kept  # merge leaves what it adds as it was
        assert merged == folded and merged_steps == folded_steps
        assert merged.summary(log.run_id) == summarize_run(log.run_id, facts(records))


def test_a_prepared_batch_partly_stored_before_folds_only_its_new_spans(logs, tmp_path):
    """A client's retry, or a request overlapping an earlier one: the spans stored before are not
    counted again, the new ones are (the batch's folded totals are then redone from its blob)."""
    store = Store(tmp_path / "store.sqlite3")
    for log in logs:
        records = log.records(source="otlp")
        half = records[: len(records) // 2]
        commit(store, prepare_spans(half))
        prepared = pickle.loads(pickle.dumps(prepare_spans(records)))  # as a decoder process sends it
        commit(store, prepared)
        commit(store, prepared)  # all of it again
        assert runs_row(store, log.run_id) == expected_row(records, log.run_id)
    assert consistent(store)["spans"] == sum(len(log.records()) for log in logs)
