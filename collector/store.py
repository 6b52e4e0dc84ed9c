"""The embedded store: one SQLite file (WAL), laid out for writing.

A request's spans are kept as compressed blobs, one per run they carry (``blobs``: zstandard
over one JSON document; blobs written before this version, and the rare one JSON cannot hold
exactly, are CBOR: ``encode_blob``), and each span gets one small row in ``span_index`` keyed by (trace id,
span id): its run, start, end, entity kind, status, and where it lives (blob id, position). A
write is then one blob insert per run and one short index row per span, instead of a wide row
of JSON text per span; reading a run decodes its blobs (only that run's spans are in them).

Dedup is on the index row: a span sent again (the same deterministic ids) leaves one copy, and
the last write wins (the index row points at the newest copy; the old one is a dead slot of its
blob, and a blob all of whose spans are dead is deleted).

Each write folds the spans it brings into the summary row of their runs (``summaries.RunFacts``
kept in ``runs.facts``, one ``run_steps`` row per step id), so a commit costs what it brings and
never re-reads the run. The spans of a run in one request are folded before the writer, where they
are prepared (``prepare_spans``, in a decoder process for a large body), into totals of their own,
which the writer merges into the run's (``RunFacts.merge``): a few operations per run, not per span.
Only a span sent again with different summary facts (another status, time, kind or run: rare)
makes its runs' totals be rebuilt from their stored spans. ``/api/runs`` pages through ``runs`` by
``sort_ns`` (the start, 0 while unknown), which an index serves.

A store written by the previous layout (a ``spans`` table of JSON columns) is migrated in place
when opened, in one transaction, with one log line saying what was done.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cbor2
import orjson
import zstandard

from telemetry.span_blobs import read_blob

from .otlp import SpanRecord
from .summaries import (
    EVENT_LOG_SCOPE,
    RunFacts,
    SpanFacts,
    StepFacts,
    Wait,
    WorldView,
    fold_waits,
)

__all__ = [
    "LAYOUT",
    "SPAN_COLUMNS",
    "non_finite",
    "EventRow",
    "PreparedSpans",
    "RunInfo",
    "SpanReader",
    "Store",
    "StoreLayoutError",
    "as_sql_row",
    "decode_blob",
    "decode_waits",
    "encode_blob",
    "encode_waits",
    "paused_gc",
    "prepare_spans",
]

log = logging.getLogger("collector.store")

#: the layout this code writes (``PRAGMA user_version``); 0 with a ``spans`` table is the previous one
LAYOUT: Final = 2

#: the runs list's order: the start, 0 while unknown; computed by SQLite (whoever writes ``start_ns``)
#: and never NULL, so ``runs_by_sort`` serves ``ORDER BY sort_ns DESC, run_id DESC`` and its cursor
_SORT_NS: Final = "INTEGER GENERATED ALWAYS AS (coalesce(start_ns, 0)) VIRTUAL"

SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS blobs (blob_id INTEGER PRIMARY KEY, run_id TEXT, received_ns INTEGER NOT NULL,"
    " spans INTEGER NOT NULL, dead INTEGER NOT NULL DEFAULT 0, data BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS blobs_by_run ON blobs (run_id)",
    "CREATE INDEX IF NOT EXISTS blobs_by_received ON blobs (received_ns)",
    "CREATE TABLE IF NOT EXISTS span_index (trace_id TEXT NOT NULL, span_id TEXT NOT NULL, run_id TEXT,"
    " start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, entity TEXT, status_code INTEGER NOT NULL,"
    " log INTEGER NOT NULL, source TEXT NOT NULL, facts INTEGER NOT NULL, blob_id INTEGER NOT NULL,"
    " pos INTEGER NOT NULL, PRIMARY KEY (trace_id, span_id)) WITHOUT ROWID",
    # what readers of the previous layout selected from ``spans`` (ids, times, run, source, received)
    "CREATE VIEW IF NOT EXISTS spans AS SELECT i.trace_id, i.span_id, i.run_id, i.start_ns, i.end_ns,"
    " i.entity, i.status_code, i.source, i.blob_id, i.pos, b.received_ns"
    " FROM span_index i JOIN blobs b ON b.blob_id = i.blob_id",
    "CREATE TABLE IF NOT EXISTS run_steps (run_id TEXT NOT NULL, step_key TEXT NOT NULL, seen INTEGER NOT NULL,"
    " seen_any INTEGER NOT NULL, failed_attempts INTEGER NOT NULL, failed_steps INTEGER NOT NULL,"
    " PRIMARY KEY (run_id, step_key)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, workflow_name TEXT, status TEXT, start_ns INTEGER,"
    " end_ns INTEGER, steps INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,"
    " benign INTEGER NOT NULL DEFAULT 0, trace_id TEXT, world_status TEXT, updated_ns INTEGER NOT NULL,"
    " waiting TEXT, events_cursor TEXT, facts TEXT, world_name TEXT, world_created_ns INTEGER,"
    f" sort_ns {_SORT_NS})",
    "CREATE TABLE IF NOT EXISTS run_events (run_id TEXT NOT NULL, event_id TEXT NOT NULL,"
    " event_type TEXT NOT NULL, correlation_id TEXT, created_ns INTEGER NOT NULL, data TEXT,"
    " PRIMARY KEY (run_id, event_id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS sentry_drops (run_id TEXT NOT NULL, rule TEXT NOT NULL, count INTEGER NOT NULL,"
    " last_message TEXT, last_ns INTEGER NOT NULL, PRIMARY KEY (run_id, rule)) WITHOUT ROWID",
)

#: indexes on ``runs``, made after the columns they name exist: the list's order (``sort_ns`` is the
#: start, 0 while unknown, never NULL: an index serves the order), and the same for the runs that wait
#: on something (live ones), so "stuck longer than" reads only these however many runs have finished
_RUN_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS runs_by_sort ON runs (sort_ns DESC, run_id DESC)",
    "CREATE INDEX IF NOT EXISTS runs_waiting_sorted ON runs (sort_ns DESC, run_id DESC) WHERE waiting IS NOT NULL",
)

#: columns added to ``runs`` since its first layout: (name, declaration), added on open when missing
_ADDED_RUN_COLUMNS: Final = (
    ("waiting", "TEXT"),
    ("events_cursor", "TEXT"),
    ("facts", "TEXT"),
    ("world_name", "TEXT"),
    ("world_created_ns", "INTEGER"),
    ("sort_ns", _SORT_NS),
)

#: a span as the previous layout's ``spans`` row held it, which is what readers get (``SpanReader``);
#: attributes, events, links and resource are JSON values here (readers that want SQL get JSON text)
SPAN_COLUMNS: Final = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_ns",
    "end_ns",
    "status_code",
    "status_message",
    "run_id",
    "service",
    "scope",
    "source",
    "benign",
    "attributes",
    "events",
    "links",
    "resource",
    "received_ns",
)
_JSON_COLUMNS: Final = frozenset({14, 15, 16, 17})

_INDEX_INSERT: Final = (
    "INSERT INTO span_index VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"  # NOT NULL still holds
)
_CHUNK: Final = 500  # ids per IN (...) list
_BLOB_SPANS: Final = 2048  # spans per blob when the store rewrites spans itself (migration)


class StoreLayoutError(sqlite3.DatabaseError):
    """The file is a store of a layout this version cannot use (one line says what to do)."""


@dataclass
class RunInfo:
    """What the world says of a run (the tailer knows it before the run span exists)."""

    run_id: str
    workflow_name: str
    status: str
    created_ns: int


@dataclass
class EventRow:
    """One event of a run's log as stored (``data`` is its eventData as JSON text)."""

    run_id: str
    event_id: str
    event_type: str
    correlation_id: str | None
    created_ns: int
    data: str | None


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def encode_waits(waits: Iterable[Wait]) -> str | None:
    """The ``runs.waiting`` column: a JSON list of waits, NULL when there is none."""
    records = [w.to_record() for w in waits]
    return _dumps(records) if records else None


def decode_waits(text: str | None) -> tuple[Wait, ...]:
    return tuple(Wait.from_record(r) for r in json.loads(text)) if text else ()


# ---- blobs -----------------------------------------------------------------------------------------
_codecs = threading.local()  # zstandard's compressor objects are not for two threads at once


def _compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_codecs, "c", None)
    if c is None:
        c = _codecs.c = zstandard.ZstdCompressor(level=1)  # fast; JSON of spans still shrinks ~5×
    return c


def encode_blob(spans: Sequence[SpanRecord], *, cbor: bool = False) -> bytes:
    """``spans`` as one blob: zstandard over the JSON ``[resources, spans]``, each span a list in
    ``telemetry.span_blobs.BLOB_FIELDS`` order naming its resource by position (a request's spans
    share one); ``telemetry.span_blobs.read_blob`` reads it back.

    JSON by orjson: three times cheaper to write than CBOR by cbor2 and twice as cheap to read back,
    the same values for what spans hold (strings, 64-bit ints, doubles, lists, maps). What JSON
    cannot hold exactly (a NaN or an infinity, an int past 64 bits, any other type: never in a span
    validated at the edge) is written as CBOR, as every blob was before; ``cbor`` asks for CBOR. The two are told
    apart by their first byte (a JSON blob starts with ``[``, a CBOR one with an array header)."""
    resources: list[dict[str, Any]] = []
    seen: dict[int, int] = {}
    items = []
    for s in spans:
        at = seen.get(id(s.resource))
        if at is None:
            at = seen[id(s.resource)] = len(resources)
            resources.append(s.resource)
        items.append(
            [
                s.trace_id,
                s.span_id,
                s.parent_span_id,
                s.name,
                s.kind,
                s.start_ns,
                s.end_ns,
                s.status_code,
                s.status_message,
                s.attributes,
                s.events,
                s.links,
                at,
                s.scope,
                s.source,
                1 if s.benign else 0,
            ]
        )
    document = [resources, items]
    if not cbor:
        try:
            data = orjson.dumps(document, default=_not_json, option=_ONLY_JSON)
        except orjson.JSONEncodeError:  # an int past 64 bits, a value of another type: CBOR keeps it
            pass
        else:  # orjson writes a NaN or an infinity as null: look for one only where a null was written
            if b"null" not in data or not non_finite(document):
                return _compressor().compress(data)
    return _compressor().compress(cbor2.dumps(document, default=_as_text))


#: types orjson would write as something else (a datetime as text, a dataclass as a map, a str or
#: int subclass as its base) go to ``default``, which refuses them: the blob is then CBOR, as before
_ONLY_JSON: Final = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def _not_json(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity is anywhere in ``value`` (spans validated at the edge hold
    none: ``validate`` writes them as strings; a span from elsewhere may)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return False


def _as_text(encoder: Any, value: Any) -> None:
    """A value CBOR has no type for is kept as its text (what the JSON columns did before)."""
    encoder.encode(str(value))


def decode_blob(data: bytes, run_id: str | None, received_ns: int) -> list[tuple[Any, ...]]:
    """A blob's spans, each a tuple in ``SPAN_COLUMNS`` order."""
    resources, items = read_blob(data)
    out = []
    for t, sp, parent, name, kind, start, end, code, message, attrs, events, links, at, scope, source, benign in items:
        resource = resources[at]
        service = resource.get("service.name")
        out.append(
            (
                t,
                sp,
                parent,
                name,
                kind,
                start,
                end,
                code,
                message,
                run_id,
                service if isinstance(service, str) else None,
                scope,
                source,
                benign,
                attrs,
                events,
                links,
                resource,
                received_ns,
            )
        )
    return out


def _facts_of_row(row: Sequence[Any]) -> SpanFacts:
    return SpanFacts.from_attributes(row[0], row[1], row[5], row[6], row[7], bool(row[13]), row[14])


def _facts_hash(f: SpanFacts) -> int:
    """The summary facts the index row has no column for, as a number: a span sent again whose
    facts changed is told from one sent again unchanged without decoding its old copy."""
    text = f"{int(f.benign)}\x1f{f.step_id or ''}\x1f{f.workflow_name or ''}\x1f{f.run_status or ''}"
    return zlib.crc32(text.encode())


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


_gc_lock = threading.Lock()
_gc_pausers = 0  # reads under way in ``paused_gc``
_gc_was_enabled = False  # whether collection was on when the first of them started


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a read decodes many spans. Decoding allocates tens of
    containers a span, none of them cyclic, and each allocation burst triggers collections that
    walk the whole heap: a 20k-span run decodes three times faster without them. Counted across
    threads (collection resumes when the last reader is done); reference counting still frees."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


class SpanReader:
    """Spans read back from their blobs for one query (each blob decoded once)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._blobs: dict[int, list[tuple[Any, ...]]] = {}

    def _load(self, blob_ids: Iterable[int]) -> None:
        missing = sorted({b for b in blob_ids if b not in self._blobs})
        for chunk in _chunks(missing):
            marks = ",".join("?" * len(chunk))
            for blob_id, run_id, received, data in self.conn.execute(
                f"SELECT blob_id, run_id, received_ns, data FROM blobs WHERE blob_id IN ({marks})", chunk
            ):
                self._blobs[blob_id] = decode_blob(data, run_id, received)

    def at(self, refs: Iterable[tuple[int, int]]) -> list[tuple[Any, ...]]:
        """The spans at these (blob id, position)s."""
        refs = list(refs)
        self._load(b for b, _ in refs)
        return [self._blobs[b][p] for b, p in refs if b in self._blobs and p < len(self._blobs[b])]

    def run_blobs(self, run_id: str) -> Iterator[tuple[bool, bytes]]:
        """The blobs of the spans carrying ``run_id``, oldest first, as stored: (whether it has dead
        slots, its bytes), for a reader that decodes them its own way (``span_blobs.blob_json``);
        a blob with dead slots is ``run``'s to read (which copy of a span is live is said here)."""
        for dead, data in self.conn.execute(
            "SELECT dead, data FROM blobs WHERE run_id = ? ORDER BY blob_id", (run_id,)
        ):
            yield bool(dead), data

    def run(self, run_id: str) -> list[tuple[Any, ...]]:
        """The live spans carrying ``run_id`` (a re-sent span's older copy left out)."""
        out: list[tuple[Any, ...]] = []
        for blob_id, received, dead, data in self.conn.execute(
            "SELECT blob_id, received_ns, dead, data FROM blobs WHERE run_id = ? ORDER BY blob_id", (run_id,)
        ):
            spans = self._blobs.get(blob_id)
            if spans is None:
                spans = self._blobs[blob_id] = decode_blob(data, run_id, received)
            out += self._live(blob_id, spans) if dead else spans
        return out

    def _live(self, blob_id: int, spans: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        live = []
        for pos, span in enumerate(spans):
            where = self.conn.execute(
                "SELECT blob_id, pos FROM span_index WHERE trace_id = ? AND span_id = ?", (span[0], span[1])
            ).fetchone()
            if where is not None and (where[0], where[1]) == (blob_id, pos):
                live.append(span)
        return live

    def trace(self, trace_id: str, *, other_than_run: str | None = None) -> list[tuple[Any, ...]]:
        """The spans of a trace (less those carrying ``other_than_run``, when given)."""
        if other_than_run is None:
            refs = self.conn.execute("SELECT blob_id, pos FROM span_index WHERE trace_id = ?", (trace_id,))
        else:
            refs = self.conn.execute(
                "SELECT blob_id, pos FROM span_index WHERE trace_id = ? AND run_id IS NOT ?", (trace_id, other_than_run)
            )
        return self.at([(r[0], r[1]) for r in refs])

    def span(self, trace_id: str, span_id: str) -> tuple[Any, ...] | None:
        ref = self.conn.execute(
            "SELECT blob_id, pos FROM span_index WHERE trace_id = ? AND span_id = ?", (trace_id, span_id)
        ).fetchone()
        found = self.at([(ref[0], ref[1])]) if ref else []
        return found[0] if found else None


def as_sql_row(span: tuple[Any, ...]) -> tuple[Any, ...]:
    """A span with its JSON values as JSON text (the previous layout's ``spans`` row)."""
    return tuple(_dumps(v) if i in _JSON_COLUMNS else v for i, v in enumerate(span))


#: spans of a run folded into fresh totals: (run totals, step totals), for ``RunFacts.merge``
Folded = tuple[RunFacts, dict[str, StepFacts]]


@dataclass
class _Stored:
    """What storing a batch's spans did: the spans new to the store, by run (to fold into their
    summaries), and the runs whose totals must be rebuilt (a span came again with other facts)."""

    new: dict[str, list[Folded]]
    rebuild: set[str]


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self.connect()
        try:
            _open_layout(conn, self.path)
        finally:
            conn.close()

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a 200 means the spans survive a crash
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA temp_store=MEMORY")  # readers lay a run's spans out in a temp table
        conn.row_factory = sqlite3.Row
        return conn

    def reader(self) -> sqlite3.Connection:
        """A connection for the calling thread (reads run in worker threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connect()
        return conn

    # ---- writing (writer thread only) ------------------------------------------------------
    @staticmethod
    def write(
        conn: sqlite3.Connection,
        spans: Iterable[SpanRecord] | PreparedSpans,
        events: Iterable[EventRow] = (),
        runs: Iterable[RunInfo] = (),
    ) -> set[str]:
        """Insert within the caller's transaction and bring the summaries of the runs touched up to
        date (from this batch alone); returns the run ids touched. ``spans``: records, or the same
        made ready by ``prepare_spans`` (outside the writer)."""
        now = time.time_ns()
        stored = _store_spans(conn, spans if isinstance(spans, PreparedSpans) else list(spans), now)
        touched: set[str] = set(stored.new) | stored.rebuild
        event_rows = list(events)
        conn.executemany(
            "INSERT OR IGNORE INTO run_events VALUES (?,?,?,?,?,?)",
            [(e.run_id, e.event_id, e.event_type, e.correlation_id, e.created_ns, e.data) for e in event_rows],
        )
        touched.update(e.run_id for e in event_rows)
        for run in runs:
            touched.add(run.run_id)
            conn.execute(
                "INSERT INTO runs (run_id, workflow_name, status, start_ns, world_status, world_name,"
                " world_created_ns, updated_ns) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET"
                " world_status=excluded.world_status, world_name=coalesce(runs.world_name, excluded.world_name),"
                " world_created_ns=min(coalesce(runs.world_created_ns, excluded.world_created_ns),"
                " excluded.world_created_ns)",
                (
                    run.run_id,
                    run.workflow_name,
                    run.status,
                    run.created_ns,
                    run.status,
                    run.workflow_name,
                    run.created_ns,
                    now,
                ),
            )
        by_run: dict[str, list[EventRow]] = {}
        for e in event_rows:
            by_run.setdefault(e.run_id, []).append(e)
        for run_id, run_events in by_run.items():
            Store._fold_waits(conn, run_id, run_events, now)
        _fold_runs(conn, stored.new, stored.rebuild, touched)
        return touched

    @staticmethod
    def _fold_waits(conn: sqlite3.Connection, run_id: str, events: list[EventRow], now: int) -> None:
        """Bring what the run waits on up to date with these events (only they are read)."""
        row = conn.execute("SELECT waiting, events_cursor FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        waiting, cursor = fold_waits(decode_waits(row[0]) if row else (), row[1] if row else None, events)
        conn.execute(
            "INSERT INTO runs (run_id, waiting, events_cursor, updated_ns) VALUES (?,?,?,?) ON CONFLICT(run_id)"
            " DO UPDATE SET waiting=excluded.waiting, events_cursor=excluded.events_cursor",
            (run_id, encode_waits(waiting), cursor, now),
        )

    @staticmethod
    def refresh_runs(conn: sqlite3.Connection, run_ids: Iterable[str]) -> None:
        """Rebuild the summary totals of each run from its stored spans (a repair, and what migration
        does; the writer never needs it: ``write`` folds each batch in as it stores it)."""
        for run_id in run_ids:
            _rebuild_run(conn, run_id)

    @staticmethod
    def record_sentry_drops(conn: sqlite3.Connection, drops: Iterable[tuple[str | None, str, str]]) -> None:
        """Sentry events the relay dropped, per (run, rule); run '' when the event named none."""
        now = time.time_ns()
        conn.executemany(
            "INSERT INTO sentry_drops VALUES (?, ?, 1, ?, ?) ON CONFLICT(run_id, rule) DO UPDATE SET"
            " count = count + 1, last_message = excluded.last_message, last_ns = excluded.last_ns",
            [(run_id or "", rule, message, now) for run_id, rule, message in drops],
        )

    @staticmethod
    def probe(conn: sqlite3.Connection) -> None:
        """A committed write that changes nothing: whether the store takes writes again after a
        storage fault, with no request to try it. The layout version is written over with itself,
        which appends a page to the WAL and syncs it, as any commit does (an empty transaction
        would succeed on a full disk)."""
        conn.execute("BEGIN IMMEDIATE")
        try:  # the version read under the write lock: another process may just have migrated
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ---- retention (writer thread) ---------------------------------------------------------
    def used_bytes(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])

    def enforce_retention(self, conn: sqlite3.Connection, *, max_age_s: float | None, max_bytes: int | None) -> int:
        """Drop the spans received more than ``max_age_s`` ago, then the oldest while the store is
        over ``max_bytes``, a whole blob at a time; returns how many spans were dropped. A run with
        no span left and nothing new since the cutoff goes too (its row, events and step totals)."""
        dropped = 0
        if max_age_s:
            cutoff = time.time_ns() - int(max_age_s * 1e9)
            old = [r[0] for r in conn.execute("SELECT blob_id FROM blobs WHERE received_ns < ?", (cutoff,))]
            dropped += _drop_blobs(conn, old)
            gone = (
                "run_id IN (SELECT run_id FROM runs WHERE updated_ns < ?"
                " AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.run_id = runs.run_id))"
            )
            conn.execute(f"DELETE FROM run_events WHERE {gone}", (cutoff,))
            conn.execute(f"DELETE FROM run_steps WHERE {gone}", (cutoff,))
            conn.execute(f"DELETE FROM runs WHERE {gone}", (cutoff,))
        while max_bytes and self.used_bytes(conn) > max_bytes:
            first, last = conn.execute("SELECT min(blob_id), max(blob_id) FROM blobs").fetchone()
            if first is None:
                break
            step = max(1, (last - first + 1) // 20)  # 5% at a time: stop close to the bound
            oldest = [r[0] for r in conn.execute("SELECT blob_id FROM blobs ORDER BY blob_id LIMIT ?", (step,))]
            dropped += _drop_blobs(conn, oldest)
        return dropped

    # ---- reading -------------------------------------------------------------------------------
    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total


# ---- writing -----------------------------------------------------------------------------------------
#: one run's spans of a batch made ready to store: (run id, blob, index rows less (blob id, position)
#: in the blob's order, and the spans folded into fresh run totals with the step totals they make)
Group = tuple[str | None, bytes, list[tuple[Any, ...]], RunFacts, dict[str, StepFacts]]


@dataclass
class PreparedSpans:
    """A batch's spans made ready to store (``prepare_spans``): per run they carry, its blob, per
    span its index row less (blob id, position), and the run's new spans already folded into totals
    (``RunFacts.merge`` adds them to the stored ones). Preparing is pure CPU and needs no
    connection, so ingest does it before the writer (in a decoder process for a large body): the
    writer's turn, which every request waits on, is the SQL and a few operations per run."""

    groups: list[Group]
    count: int


def _facts_row(s: SpanRecord, run_id: str | None) -> tuple[tuple[Any, ...], SpanFacts]:
    """(index row less blob id and position, the span's facts)."""
    facts = SpanFacts.from_attributes(
        s.trace_id, s.span_id, s.start_ns, s.end_ns, s.status_code, s.benign, s.attributes
    )
    row = (
        s.trace_id,
        s.span_id,
        run_id,
        s.start_ns,
        s.end_ns,
        facts.kind,
        s.status_code,
        1 if s.scope == EVENT_LOG_SCOPE else 0,
        s.source,
        _facts_hash(facts),
    )
    return row, facts


def prepare_spans(spans: Sequence[SpanRecord], *, cbor: bool = False) -> PreparedSpans:
    """One blob per run the spans carry; a span sent twice in the same batch is kept once (the last copy)."""
    latest = {(s.trace_id, s.span_id): s for s in spans}
    if len(latest) != len(spans):
        spans = list(latest.values())
    by_run: dict[str | None, list[SpanRecord]] = {}
    for s in spans:
        by_run.setdefault(s.run_id or None, []).append(s)  # "" names no run (as before)
    groups: list[Group] = []
    for run_id, group in by_run.items():
        rows: list[tuple[Any, ...]] = []
        facts: list[SpanFacts] = []
        for s in group:
            row, f = _facts_row(s, run_id)
            rows.append(row)
            facts.append(f)
        folded, steps = RunFacts(), dict[str, StepFacts]()
        if run_id is not None:
            folded.fold(facts, steps)
        groups.append((run_id, encode_blob(group, cbor=cbor), rows, folded, steps))
    return PreparedSpans(groups, len(spans))


def _store_spans(
    conn: sqlite3.Connection, spans: Sequence[SpanRecord] | PreparedSpans, now: int, *, cbor: bool = False
) -> _Stored:
    """One blob per run the spans carry, one index row per span; a span already stored is pointed
    at its new copy (last write wins)."""
    stored = _Stored({}, set())
    prepared = spans if isinstance(spans, PreparedSpans) else prepare_spans(spans, cbor=cbor)
    if not prepared.count:
        return stored
    rows: list[tuple[Any, ...]] = []
    blob_id = conn.execute("SELECT coalesce(max(blob_id), 0) FROM blobs").fetchone()[0]
    blobs: list[tuple[Any, ...]] = []
    for run_id, data, group_rows, _, _ in prepared.groups:
        blob_id += 1
        blobs.append((blob_id, run_id, now, len(group_rows), data))
        rows += [(*row, blob_id, pos) for pos, row in enumerate(group_rows)]
    conn.executemany("INSERT INTO blobs (blob_id, run_id, received_ns, spans, data) VALUES (?,?,?,?,?)", blobs)
    new_blobs = {b[0] for b in blobs}
    before = conn.total_changes
    conn.executemany(_INDEX_INSERT, rows)
    again: set[tuple[str, str]] = set()
    if conn.total_changes - before < len(rows):  # some were stored before: the new copies win
        again = _replace(conn, rows, new_blobs, stored.rebuild)
    for run_id, data, group_rows, folded, steps in prepared.groups:
        if run_id is None:
            continue
        if again and any((row[0], row[1]) in again for row in group_rows):
            # some were stored before (a client's retry, say): fold only the others, read from the blob
            # (the rare case: a batch carries its spans' facts folded, not span by span)
            folded, steps = RunFacts(), {}
            folded.fold([_facts_of_row(s) for s in decode_blob(data, run_id, now) if (s[0], s[1]) not in again], steps)
        stored.new.setdefault(run_id, []).append((folded, steps))
    return stored


def _replace(
    conn: sqlite3.Connection, rows: list[tuple[Any, ...]], new_blobs: set[int], rebuild: set[str]
) -> set[tuple[str, str]]:
    """Point the index rows of spans stored before at their new copies; count the old copies dead
    (a blob left with no live span goes); runs whose summary facts changed go in ``rebuild``.
    Returns the keys that were stored before."""
    by_key = {(r[0], r[1]): r for r in rows}
    by_trace: dict[str, list[str]] = {}
    for trace_id, span_id in by_key:
        by_trace.setdefault(trace_id, []).append(span_id)
    old: list[tuple[Any, ...]] = []
    for trace_id, span_ids in by_trace.items():
        for chunk in _chunks(span_ids):
            old += conn.execute(
                "SELECT trace_id, span_id, run_id, start_ns, end_ns, entity, status_code, facts, blob_id"
                f" FROM span_index WHERE trace_id = ? AND span_id IN ({','.join('?' * len(chunk))})",
                (trace_id, *chunk),
            ).fetchall()
    again: set[tuple[str, str]] = set()
    updates: list[tuple[Any, ...]] = []
    dead: dict[int, int] = {}
    for o in old:
        if o[8] in new_blobs:
            continue  # stored by this batch
        key = (o[0], o[1])
        new = by_key[key]
        again.add(key)
        if (o[2], o[3], o[4], o[5], o[6], o[7]) != (new[2], new[3], new[4], new[5], new[6], new[9]):
            rebuild.update(r for r in (o[2], new[2]) if r)
        updates.append((*new[2:], o[0], o[1]))
        dead[o[8]] = dead.get(o[8], 0) + 1
    conn.executemany(
        "UPDATE span_index SET run_id=?, start_ns=?, end_ns=?, entity=?, status_code=?, log=?, source=?, facts=?,"
        " blob_id=?, pos=? WHERE trace_id=? AND span_id=?",
        updates,
    )
    conn.executemany("UPDATE blobs SET dead = dead + ? WHERE blob_id = ?", [(n, b) for b, n in dead.items()])
    for chunk in _chunks(sorted(dead)):
        conn.execute(f"DELETE FROM blobs WHERE blob_id IN ({','.join('?' * len(chunk))}) AND dead >= spans", chunk)
    return again


def _load_steps(conn: sqlite3.Connection, run_id: str, keys: Sequence[str]) -> dict[str, StepFacts]:
    steps: dict[str, StepFacts] = {}
    for chunk in _chunks(keys):
        for key, seen, seen_any, attempts, failed in conn.execute(
            "SELECT step_key, seen, seen_any, failed_attempts, failed_steps FROM run_steps"
            f" WHERE run_id = ? AND step_key IN ({','.join('?' * len(chunk))})",
            (run_id, *chunk),
        ):
            steps[key] = StepFacts(bool(seen), bool(seen_any), attempts, failed)
    return steps


def _fold_runs(conn: sqlite3.Connection, new: dict[str, list[Folded]], rebuild: set[str], touched: set[str]) -> None:
    """Bring the rows of the runs touched up to date: merge the totals of their spans new to the
    store into theirs (reading only the step rows they name), or rebuild those in ``rebuild``; a
    few statements per batch, not per run."""
    runs: dict[str, tuple[Any, ...]] = {}
    names = sorted(touched - rebuild)
    for chunk in _chunks(names):
        for row in conn.execute(
            "SELECT run_id, facts, world_status, world_name, world_created_ns, waiting FROM runs"
            f" WHERE run_id IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            runs[row[0]] = tuple(row)
    summaries: list[tuple[Any, ...]] = []
    step_rows: list[tuple[Any, ...]] = []
    for run_id in names:
        row = runs.get(run_id)
        text = row[1] if row else None
        partials = new.get(run_id, [])
        if not text and len(partials) == 1:  # nothing folded yet: the new spans' totals are the run's
            facts, steps = partials[0]
            step_rows += _step_rows(run_id, steps)
        else:
            facts = RunFacts.from_json(text)
            if partials:
                keys = sorted({key for _, more in partials for key in more})
                # a run none of whose spans was folded yet has no step rows: nothing to read
                steps = _load_steps(conn, run_id, keys) if text else {}
                for more_facts, more in partials:
                    facts.merge(more_facts, more, steps)
                step_rows += _step_rows(run_id, steps)
        summaries.append(_summary_row(run_id, facts, row[2:] if row else None))
    conn.executemany(_STEPS_UPSERT, step_rows)
    conn.executemany(_SUMMARY_UPSERT, summaries)
    for run_id in sorted(rebuild):
        _rebuild_run(conn, run_id)


_STEPS_UPSERT: Final = "INSERT OR REPLACE INTO run_steps VALUES (?,?,?,?,?,?)"
_SUMMARY_UPSERT: Final = (
    "INSERT INTO runs (run_id, workflow_name, status, start_ns, end_ns, steps, errors, benign, trace_id,"
    " waiting, updated_ns, facts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET"
    " workflow_name=excluded.workflow_name, status=excluded.status, start_ns=excluded.start_ns,"
    " end_ns=excluded.end_ns, steps=excluded.steps, errors=excluded.errors, benign=excluded.benign,"
    " trace_id=excluded.trace_id, waiting=excluded.waiting, updated_ns=excluded.updated_ns,"
    " facts=excluded.facts"
)


def _step_rows(run_id: str, steps: dict[str, StepFacts]) -> list[tuple[Any, ...]]:
    return [(run_id, key, int(s.seen), int(s.seen_any), s.failed_attempts, s.failed_steps) for key, s in steps.items()]


def _summary_row(run_id: str, facts: RunFacts, world_row: Sequence[Any] | None) -> tuple[Any, ...]:
    """The runs row of ``facts``; ``world_row``: (world status, world name, world created, waiting)."""
    world = WorldView(world_row[0], world_row[1], world_row[2]) if world_row else None
    summary = facts.summary(run_id, world, decode_waits(world_row[3]) if world_row else ())
    return (
        run_id,
        summary.workflow_name,
        summary.status,
        summary.start_ns,
        summary.end_ns,
        summary.steps,
        summary.errors,
        summary.benign,
        summary.trace_id,
        encode_waits(summary.waiting),
        time.time_ns(),
        facts.to_json(),
    )


def _rebuild_run(conn: sqlite3.Connection, run_id: str) -> None:
    """The run's totals again from its stored spans (reads the run: only for repairs and the rare
    span sent again with other facts)."""
    spans = [_facts_of_row(s) for s in SpanReader(conn).run(run_id)]
    steps: dict[str, StepFacts] = {}
    facts = RunFacts()
    facts.fold(spans, steps)
    conn.execute("DELETE FROM run_steps WHERE run_id = ?", (run_id,))
    conn.executemany(_STEPS_UPSERT, _step_rows(run_id, steps))
    row = conn.execute(
        "SELECT world_status, world_name, world_created_ns, waiting FROM runs WHERE run_id = ?", (run_id,)
    ).fetchone()
    conn.execute(_SUMMARY_UPSERT, _summary_row(run_id, facts, row))


def _drop_blobs(conn: sqlite3.Connection, blob_ids: Sequence[int]) -> int:
    """Delete these blobs and the index rows still pointing into them; returns how many spans went."""
    dropped = 0
    for chunk in _chunks(blob_ids, 64):
        marks = ",".join("?" * len(chunk))
        keys: list[tuple[str, str, int]] = []
        for blob_id, data in conn.execute(f"SELECT blob_id, data FROM blobs WHERE blob_id IN ({marks})", chunk):
            _, items = read_blob(data)
            keys += [(item[0], item[1], blob_id) for item in items]
        dropped += conn.executemany(
            "DELETE FROM span_index WHERE trace_id = ? AND span_id = ? AND blob_id = ?", keys
        ).rowcount
        conn.execute(f"DELETE FROM blobs WHERE blob_id IN ({marks})", chunk)
    return dropped


# ---- opening and migrating ---------------------------------------------------------------------------
def _open_layout(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema, or migrate a store of the previous layout (in one transaction)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > LAYOUT:
        raise StoreLayoutError(
            f"store {path} has layout {version}, newer than this wft knows ({LAYOUT}): upgrade wft to open it"
        )
    kinds = dict(conn.execute("SELECT name, type FROM sqlite_master WHERE name IN ('spans', 'runs')").fetchall())
    if kinds.get("spans") == "table":
        _migrate_v1(conn, path)
        return
    if version == LAYOUT:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        _create(conn)
        conn.execute(f"PRAGMA user_version = {LAYOUT}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _create(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        conn.execute(statement)
    _add_missing_columns(conn)
    for statement in _RUN_INDEXES:
        conn.execute(statement)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """A store written by an earlier version gets the ``runs`` columns added since (NULL: nothing known)."""
    present = {row[1] for row in conn.execute("PRAGMA table_xinfo(runs)")}  # xinfo: generated ones too
    for name, declaration in _ADDED_RUN_COLUMNS:
        if name not in present:
            conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {declaration}")


def _migrate_v1(conn: sqlite3.Connection, path: Path) -> None:
    """The previous layout (a ``spans`` row of JSON columns per span) to blobs and the span index,
    and every run's totals rebuilt from its spans: in place, in one transaction (a crash midway
    leaves the old layout whole), then one log line."""
    started = time.monotonic()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("ALTER TABLE spans RENAME TO spans_v1")
        for index in ("runs_by_start", "runs_waiting"):
            conn.execute(f"DROP INDEX IF EXISTS {index}")  # replaced by the sort_ns ones
        _create(conn)
        # the world's view of a run was its row (start so far, name): keep it as what the world said
        conn.execute(
            "UPDATE runs SET world_name = coalesce(world_name, workflow_name),"
            " world_created_ns = coalesce(world_created_ns, start_ns)"
        )
        moved = 0
        batch: list[SpanRecord] = []
        received = 0
        for row in conn.execute(
            "SELECT trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, status_code, status_message,"
            " scope, source, benign, attributes, events, links, resource, received_ns FROM spans_v1"
        ):
            batch.append(
                SpanRecord(
                    trace_id=row[0],
                    span_id=row[1],
                    parent_span_id=row[2],
                    name=row[3],
                    kind=row[4],
                    start_ns=row[5],
                    end_ns=row[6],
                    status_code=row[7],
                    status_message=row[8],
                    attributes=json.loads(row[12]),
                    events=json.loads(row[13]),
                    links=json.loads(row[14]),
                    resource=json.loads(row[15]),
                    scope=row[9] or "",
                    source=row[10],
                    benign=bool(row[11]),
                )
            )
            received = max(received, row[16])
            if len(batch) >= _BLOB_SPANS:
                moved += len(batch)
                _store_spans(conn, batch, received, cbor=True)
                batch, received = [], 0
        if batch:
            moved += len(batch)
            _store_spans(conn, batch, received, cbor=True)
        run_ids = [
            r[0]
            for r in conn.execute("SELECT run_id FROM runs UNION SELECT run_id FROM blobs WHERE run_id IS NOT NULL")
        ]
        for run_id in run_ids:
            _rebuild_run(conn, run_id)
        conn.execute("DROP TABLE spans_v1")
        conn.execute(f"PRAGMA user_version = {LAYOUT}")
        conn.execute("COMMIT")
    except Exception as error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreLayoutError(
            f"store {path}: migrating to layout {LAYOUT} failed ({type(error).__name__}: {error}); the store is"
            " unchanged (free space, or move it away to start a new one)"
        ) from error
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    log.warning(
        "store %s migrated to layout %d (span blobs + index): %d spans, %d runs in %.1f s",
        path,
        LAYOUT,
        moved,
        len(run_ids),
        time.monotonic() - started,
    )
