"""The embedded store: one SQLite file (WAL), spans keyed by (trace id, span id).

Writes happen on one writer thread (see ``writer``); reads use their own connections, which
WAL lets run beside the writer. Spans are upserted, so a re-sent span (same deterministic id)
leaves one copy. Each write refreshes the summary row of the runs it touched, which is what
``/api/runs`` pages through; what goes in that row is ``summaries``' to decide, the store only
selects the rows it needs and writes the answer back.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemetry.semconv import STEP_ID, WORKFLOW_NAME, WORKFLOW_SPAN_KIND

from .otlp import SpanRecord
from .summaries import RUN_STATUS, SpanFacts, Wait, WorldView, fold_waits, summarize_run

__all__ = ["Store", "RunInfo", "EventRow", "decode_waits", "encode_waits"]

SCHEMA = """
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
"""


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


#: the runs that wait on something (live ones), in the runs list's order: "stuck longer than" reads
#: only these, however many finished runs the store holds
_WAITING_INDEX = (
    "CREATE INDEX IF NOT EXISTS runs_waiting ON runs (coalesce(start_ns, 0) DESC, run_id DESC)"
    " WHERE waiting IS NOT NULL"
)

#: columns added to ``runs`` since its first layout: (name, declaration), added on open when missing
_ADDED_RUN_COLUMNS = (("waiting", "TEXT"), ("events_cursor", "TEXT"))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _attribute(name: str) -> str:
    """SQL for one span attribute (names hold dots, so the JSON path quotes them)."""
    return f"json_extract(attributes, '$.\"{name}\"')"


#: a run's spans, as ``summaries.SpanFacts`` wants them (only the attributes it reads are extracted)
_RUN_SPAN_FACTS = (
    "SELECT trace_id, span_id, start_ns, end_ns, status_code, benign,"
    f" {_attribute(WORKFLOW_SPAN_KIND)}, {_attribute(STEP_ID)}, {_attribute(WORKFLOW_NAME)}, {_attribute(RUN_STATUS)}"
    " FROM spans WHERE run_id = ?"
)


def encode_waits(waits: Iterable[Wait]) -> str | None:
    """The ``runs.waiting`` column: a JSON list of waits, NULL when there is none."""
    records = [w.to_record() for w in waits]
    return _dumps(records) if records else None


def decode_waits(text: str | None) -> tuple[Wait, ...]:
    return tuple(Wait.from_record(r) for r in json.loads(text)) if text else ()


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self.connect()
        try:
            conn.executescript(SCHEMA)
            _add_missing_columns(conn)
            conn.execute(_WAITING_INDEX)  # after the columns it names exist
        finally:
            conn.close()

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a 200 means the spans survive a crash
        conn.execute("PRAGMA busy_timeout=30000")
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
        spans: Iterable[SpanRecord],
        events: Iterable[EventRow] = (),
        runs: Iterable[RunInfo] = (),
    ) -> set[str]:
        """Insert within the caller's transaction; returns the run ids touched."""
        now = time.time_ns()
        touched: set[str] = set()
        rows = []
        resources: dict[int, str] = {}  # one request's spans share one resource dict
        for s in spans:
            resource = resources.get(id(s.resource))
            if resource is None:
                resource = resources[id(s.resource)] = _dumps(s.resource)
            run_id = s.run_id
            if run_id:
                touched.add(run_id)
            rows.append(
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
                    run_id,
                    s.resource.get("service.name"),
                    s.scope,
                    s.source,
                    int(s.benign),
                    _dumps(s.attributes),
                    _dumps(s.events) if s.events else "[]",
                    _dumps(s.links) if s.links else "[]",
                    resource,
                    now,
                )
            )
        conn.executemany("INSERT OR REPLACE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        event_rows = list(events)
        conn.executemany(
            "INSERT OR IGNORE INTO run_events VALUES (?,?,?,?,?,?)",
            [(e.run_id, e.event_id, e.event_type, e.correlation_id, e.created_ns, e.data) for e in event_rows],
        )
        touched.update(e.run_id for e in event_rows)
        for run in runs:
            touched.add(run.run_id)
            conn.execute(
                "INSERT INTO runs (run_id, workflow_name, status, start_ns, world_status, updated_ns)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET world_status=excluded.world_status,"
                " workflow_name=coalesce(runs.workflow_name, excluded.workflow_name),"
                " start_ns=min(coalesce(runs.start_ns, excluded.start_ns), excluded.start_ns)",
                (run.run_id, run.workflow_name, run.status, run.created_ns, run.status, now),
            )
        by_run: dict[str, list[EventRow]] = {}
        for e in event_rows:
            by_run.setdefault(e.run_id, []).append(e)
        for run_id, run_events in by_run.items():
            Store._fold_waits(conn, run_id, run_events, now)
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
        """Recompute the runs-list row of each run (``summaries.summarize_run`` decides what it says)."""
        for run_id in run_ids:
            spans = [SpanFacts.create(*row) for row in conn.execute(_RUN_SPAN_FACTS, (run_id,))]
            current = conn.execute(
                "SELECT world_status, workflow_name, start_ns, waiting FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            # the row's start so far stands for the world's created time: it only ever moves earlier
            world = WorldView(current[0], current[1], current[2]) if current else None
            summary = summarize_run(run_id, spans, world, decode_waits(current[3]) if current else ())
            conn.execute(
                "INSERT INTO runs (run_id, workflow_name, status, start_ns, end_ns, steps, errors, benign, trace_id,"
                " waiting, updated_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET"
                " workflow_name=excluded.workflow_name, status=excluded.status, start_ns=excluded.start_ns,"
                " end_ns=excluded.end_ns, steps=excluded.steps, errors=excluded.errors, benign=excluded.benign,"
                " trace_id=excluded.trace_id, waiting=excluded.waiting, updated_ns=excluded.updated_ns",
                (
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
                ),
            )

    @staticmethod
    def record_sentry_drops(conn: sqlite3.Connection, drops: Iterable[tuple[str | None, str, str]]) -> None:
        """Sentry events the relay dropped, per (run, rule); run '' when the event named none."""
        now = time.time_ns()
        conn.executemany(
            "INSERT INTO sentry_drops VALUES (?, ?, 1, ?, ?) ON CONFLICT(run_id, rule) DO UPDATE SET"
            " count = count + 1, last_message = excluded.last_message, last_ns = excluded.last_ns",
            [(run_id or "", rule, message, now) for run_id, rule, message in drops],
        )

    # ---- retention (writer thread) ---------------------------------------------------------
    def used_bytes(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])

    def enforce_retention(self, conn: sqlite3.Connection, *, max_age_s: float | None, max_bytes: int | None) -> int:
        """Drop spans older than ``max_age_s`` and the oldest runs while over ``max_bytes``."""
        dropped = 0
        if max_age_s:
            cutoff = time.time_ns() - int(max_age_s * 1e9)
            dropped += conn.execute("DELETE FROM spans WHERE received_ns < ?", (cutoff,)).rowcount
            conn.execute(
                "DELETE FROM run_events WHERE run_id NOT IN (SELECT run_id FROM spans WHERE run_id IS NOT NULL)"
                " AND run_id IN (SELECT run_id FROM runs WHERE updated_ns < ?)",
                (cutoff,),
            )
            conn.execute(
                "DELETE FROM runs WHERE updated_ns < ?"
                " AND run_id NOT IN (SELECT run_id FROM spans WHERE run_id IS NOT NULL)",
                (cutoff,),
            )
        while max_bytes and self.used_bytes(conn) > max_bytes:
            count = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
            if count == 0:
                break
            step = max(50, count // 20)  # 5% at a time: stop close to the bound
            batch = conn.execute(
                "DELETE FROM spans WHERE (trace_id, span_id) IN"
                " (SELECT trace_id, span_id FROM spans ORDER BY received_ns LIMIT ?)",
                (step,),
            ).rowcount
            dropped += batch
            if batch == 0:
                break
        return dropped

    # ---- reading -------------------------------------------------------------------------------
    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """A store written by an earlier version gets the ``runs`` columns added since (NULL: nothing known)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    for name, declaration in _ADDED_RUN_COLUMNS:
        if name not in present:
            conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {declaration}")
