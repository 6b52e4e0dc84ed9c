"""collector/writer.py: group commit, acknowledgement after commit, the queue bound, close and drain.

A real Store (SQLite file in tmp_path) and real SDK spans; what is on disk is read back through a
fresh connection, as another process would see it.
"""

from __future__ import annotations

import asyncio
import pickle
import sqlite3
import threading
import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from collector.otlp import PROTOBUF, SpanRecord, decode_request, records_from
from collector.store import EventRow, RunInfo, Store, prepare_spans
from collector.writer import Batch, Overloaded, Writer

from .sdk_spans import RUN, make_sdk_spans


def _records(count: int = 2) -> list[SpanRecord]:
    records, _, _ = records_from(decode_request(encode_spans(make_sdk_spans(count)).SerializeToString(), PROTOBUF))
    return records


def _on_disk(store: Store, table: str = "spans") -> int:
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def _span_ids_on_disk(store: Store) -> set[str]:
    conn = sqlite3.connect(store.path)
    try:
        return {row[0] for row in conn.execute("SELECT span_id FROM spans")}
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store.sqlite3")


@pytest.fixture
def writer(store):
    made: list[Writer] = []

    def make(**options) -> Writer:
        made.append(Writer(store, **options))
        return made[-1]

    yield make
    for w in made:
        try:
            w.stop()
        except RuntimeError:  # never started: nothing to stop
            pass


def _start(w: Writer) -> threading.Thread:
    """Start ``w`` and return its thread (the one thread that appeared)."""
    before = set(threading.enumerate())
    w.start()
    (thread,) = set(threading.enumerate()) - before
    return thread


def test_submit_returns_after_the_spans_are_on_disk(store, writer):
    w = writer()
    w.start()
    records = _records()

    async def go():
        await w.submit(Batch(spans=records))
        return _span_ids_on_disk(store)  # read the moment submit returns, from another connection

    assert asyncio.run(go()) == {r.span_id for r in records}
    assert w.commits == 1 and w.pending == 0


def test_batch_size_counts_every_row_plus_one():
    records = _records(1)
    event = EventRow(RUN, "evnt_1", "run_created", None, 1, None)
    run = RunInfo(RUN, "workflow//./w//demo", "running", 1)
    batch = Batch(spans=records, events=[event], runs=[run], sentry_drops=[(RUN, "rule", "m")])
    assert batch.size == len(records) + 3 + 1
    assert Batch().size == 1  # an empty batch still takes a place in the queue


def test_a_prepared_batch_is_stored_like_its_records(store, writer, tmp_path):
    """Ingest hands the writer spans made ready to store (``prepare_spans``, off the writer): the
    same rows, blobs and run summary as the records themselves, and the same size in the queue."""
    records = _records(4)
    records.append(records[0])  # sent twice in one request: kept once
    other = Store(tmp_path / "other.sqlite3")
    made = prepare_spans(records)
    carried = pickle.loads(pickle.dumps(made))  # as it comes back from a decoder process
    assert carried.groups == made.groups and carried.count == made.count == len(records) - 1
    plain, prepared = Batch(spans=records), Batch(spans=records, prepared=carried)
    assert (plain.size, prepared.size) == (len(records) + 1, len(records))  # prepared: the copy counted once

    def dump(s: Store) -> tuple[list[tuple], list[tuple], list[tuple]]:
        conn = sqlite3.connect(s.path)
        try:
            index = conn.execute("SELECT * FROM span_index ORDER BY trace_id, span_id").fetchall()
            blobs = conn.execute("SELECT run_id, spans, dead, data FROM blobs ORDER BY blob_id").fetchall()
            runs = conn.execute("SELECT run_id, status, start_ns, end_ns, steps, errors, benign FROM runs").fetchall()
            return index, blobs, runs
        finally:
            conn.close()

    for target, batch in ((store, plain), (other, prepared)):
        w = Writer(target)
        w.start()
        asyncio.run(w.submit(batch))
        w.stop()
    assert dump(store) == dump(other)
    assert len(dump(other)[0]) == len(records) - 1 and dump(other)[2]


def test_batches_waiting_together_are_committed_together(store, writer):
    w = writer()
    batches = [Batch(spans=_records(1)) for _ in range(20)]

    async def go():
        tasks = [asyncio.create_task(w.submit(b)) for b in batches]
        await asyncio.sleep(0.05)  # all queued while the writer is not yet running
        assert w.pending == sum(b.size for b in batches) and w.commits == 0
        w.start()
        await asyncio.gather(*tasks)

    asyncio.run(go())
    assert w.commits == 1  # one transaction, one fsync, for twenty requests
    assert _span_ids_on_disk(store) == {r.span_id for b in batches for r in b.spans}
    assert w.pending == 0


def test_concurrent_requests_share_commits(store, writer):
    w = writer()
    w.start()
    batches = [Batch(spans=_records(1)) for _ in range(60)]

    async def go():
        await asyncio.gather(*(w.submit(b) for b in batches))

    asyncio.run(go())
    assert 1 <= w.commits <= len(batches)
    assert _span_ids_on_disk(store) == {r.span_id for b in batches for r in b.spans}


def test_queue_bound_refuses_at_once_and_recovers(store, writer):
    first = Batch(spans=_records(2))
    too_many_spans = _records(2)
    w = writer(max_pending=first.size + 3)

    async def go():
        queued = asyncio.create_task(w.submit(first))
        await asyncio.sleep(0.01)
        assert w.pending == first.size
        too_many = Batch(spans=too_many_spans)
        assert first.size + too_many.size > w.max_pending
        started = time.monotonic()
        with pytest.raises(Overloaded, match="write queue full"):
            await w.submit(too_many)
        assert time.monotonic() - started < 1.0  # refused at once, not after waiting
        assert w.pending == first.size  # the refused batch took no place
        fits = Batch(spans=[first.spans[0], first.spans[1]])
        assert first.size + fits.size == w.max_pending  # exactly at the bound is allowed
        second = asyncio.create_task(w.submit(fits))
        await asyncio.sleep(0.01)
        assert w.pending == w.max_pending
        w.start()
        await asyncio.gather(queued, second)
        assert w.pending == 0
        await w.submit(too_many)  # room again once the queue drained

    asyncio.run(go())
    assert _span_ids_on_disk(store) == {r.span_id for r in first.spans + too_many_spans}


def test_a_batch_larger_than_the_bound_is_always_refused(writer):
    w = writer(max_pending=3)
    w.start()
    with pytest.raises(Overloaded):
        asyncio.run(w.submit(Batch(spans=_records(3))))
    assert w.pending == 0 and w.commits == 0


def test_a_failed_write_fails_its_request_and_the_writer_goes_on(store, writer, caplog):
    w = writer()
    w.start()
    bad = _records(1)
    bad[0].trace_id = None  # type: ignore[assignment]  # the store refuses it (span_index.trace_id is NOT NULL)
    good = _records(1)

    async def go():
        with pytest.raises(sqlite3.IntegrityError):
            await w.submit(Batch(spans=bad))
        await w.submit(Batch(spans=good))

    with caplog.at_level("ERROR", logger="collector.writer"):
        asyncio.run(go())
    assert _span_ids_on_disk(store) == {r.span_id for r in good}  # nothing of the failed batch
    assert w.pending == 0 and w.commits == 1
    assert any("store write failed" in r.getMessage() for r in caplog.records)


def test_a_cancelled_request_does_not_break_the_writer(store, writer, caplog):
    w = writer()
    batch = Batch(spans=_records(1))
    later = Batch(spans=_records(1))

    async def go():
        task = asyncio.create_task(w.submit(batch))
        await asyncio.sleep(0.01)
        task.cancel()  # the client went away while its batch was queued
        with pytest.raises(asyncio.CancelledError):
            await task
        w.start()
        await w.submit(later)

    with caplog.at_level("ERROR"):
        asyncio.run(go())
    assert w.pending == 0 and not caplog.records
    assert {r.span_id for r in later.spans} <= _span_ids_on_disk(store)


def test_stop_drains_what_was_queued(store, writer):
    w = writer()
    batches = [Batch(spans=_records(1)) for _ in range(10)]

    async def go():
        tasks = [asyncio.create_task(w.submit(b)) for b in batches]
        await asyncio.sleep(0.01)
        thread = _start(w)
        await asyncio.to_thread(w.stop)
        return thread, await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)

    thread, results = asyncio.run(go())
    assert results == [None] * len(batches)
    assert not thread.is_alive()
    assert _span_ids_on_disk(store) == {r.span_id for b in batches for r in b.spans}


def test_stop_with_nothing_queued_ends_the_thread(writer):
    w = writer()
    thread = _start(w)
    assert thread.name == "wft-writer" and thread.is_alive()
    w.stop()
    assert not thread.is_alive()


def test_events_runs_and_sentry_drops_go_through_the_same_commit(store, writer):
    w = writer()
    w.start()
    batch = Batch(
        events=[EventRow(RUN, f"evnt_{i}", "step_created", f"step_{i}", i, None) for i in range(3)],
        runs=[RunInfo(RUN, "workflow//./w//demo", "running", 5)],
        sentry_drops=[(RUN, "vercel-stream-409", "first"), (RUN, "vercel-stream-409", "second"), (None, "r2", "x")],
    )

    async def go():
        await w.submit(batch)

    asyncio.run(go())
    assert w.commits == 1
    assert _on_disk(store, "run_events") == 3
    conn = sqlite3.connect(store.path)
    try:
        run = conn.execute("SELECT world_status, workflow_name FROM runs WHERE run_id = ?", (RUN,)).fetchone()
        drops = dict(conn.execute("SELECT rule, count FROM sentry_drops").fetchall())
        last = conn.execute("SELECT last_message FROM sentry_drops WHERE rule = 'vercel-stream-409'").fetchone()[0]
    finally:
        conn.close()
    assert run == ("running", "workflow//./w//demo")
    assert drops == {"vercel-stream-409": 2, "r2": 1} and last == "second"


def test_retention_runs_on_the_writer_thread(store, writer):
    w = writer(max_age_s=1e-9, retention_every_s=0.0)
    w.start()
    old = Batch(spans=_records(2))

    async def go():
        await w.submit(old)
        await asyncio.sleep(0.01)
        await w.submit(Batch(spans=_records(1)))  # the next group triggers retention of everything older
        deadline = time.monotonic() + 5
        while w.retention_dropped < len(old.spans) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    asyncio.run(go())
    assert w.retention_dropped >= len(old.spans)
    assert not ({r.span_id for r in old.spans} & _span_ids_on_disk(store))


def test_no_retention_without_a_bound(store, writer):
    w = writer(max_age_s=None, max_bytes=None, retention_every_s=0.0)
    w.start()
    batches = [Batch(spans=_records(1)) for _ in range(3)]

    async def go():
        for b in batches:
            await w.submit(b)

    asyncio.run(go())
    w.stop()
    assert w.retention_dropped == 0
    assert _span_ids_on_disk(store) == {r.span_id for b in batches for r in b.spans}
