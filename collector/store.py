"""The embedded store: one SQLite file (WAL), spans keyed by (trace id, span id).

Writes happen on one writer thread (see ``writer``); reads use their own connections, which
WAL lets run beside the writer. Spans are upserted, so a re-sent span (same deterministic id)
leaves one copy. Each write refreshes the summary row of the runs it touched, which is what
``/api/runs`` pages through.
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

from .otlp import SpanRecord

__all__ = ["Store", "RunInfo", "EventRow"]

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
  trace_id TEXT, world_status TEXT, updated_ns INTEGER NOT NULL
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
    run_id: str
    event_id: str
    event_type: str
    correlation_id: str | None
    created_ns: int
    data: str | None


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.connect() as conn:
            conn.executescript(SCHEMA)

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
        event_rows = [(e.run_id, e.event_id, e.event_type, e.correlation_id, e.created_ns, e.data) for e in events]
        conn.executemany("INSERT OR IGNORE INTO run_events VALUES (?,?,?,?,?,?)", event_rows)
        touched.update(e[0] for e in event_rows)
        for run in runs:
            touched.add(run.run_id)
            conn.execute(
                "INSERT INTO runs (run_id, workflow_name, status, start_ns, world_status, updated_ns) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT(run_id) DO UPDATE SET world_status=excluded.world_status, workflow_name=coalesce(runs.workflow_name, excluded.workflow_name)",
                (run.run_id, run.workflow_name, run.status, run.created_ns, run.status, now),
            )
        return touched

    @staticmethod
    def refresh_runs(conn: sqlite3.Connection, run_ids: Iterable[str]) -> None:
        for run_id in run_ids:
            spans = conn.execute(
                "SELECT trace_id, name, start_ns, end_ns, status_code, source, benign, attributes, scope FROM spans WHERE run_id = ?",
                (run_id,),
            ).fetchall()
            current = conn.execute(
                "SELECT world_status, workflow_name, start_ns FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            summary = summarize(run_id, spans, current)
            conn.execute(
                "INSERT INTO runs (run_id, workflow_name, status, start_ns, end_ns, steps, errors, benign, trace_id, updated_ns)"
                " VALUES (:run_id,:workflow_name,:status,:start_ns,:end_ns,:steps,:errors,:benign,:trace_id,:updated_ns)"
                " ON CONFLICT(run_id) DO UPDATE SET workflow_name=excluded.workflow_name, status=excluded.status,"
                " start_ns=excluded.start_ns, end_ns=excluded.end_ns, steps=excluded.steps, errors=excluded.errors,"
                " benign=excluded.benign, trace_id=excluded.trace_id, updated_ns=excluded.updated_ns",
                summary,
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
        return pages * conn.execute("PRAGMA page_size").fetchone()[0]

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
                "DELETE FROM runs WHERE updated_ns < ? AND run_id NOT IN (SELECT run_id FROM spans WHERE run_id IS NOT NULL)",
                (cutoff,),
            )
        while max_bytes and self.used_bytes(conn) > max_bytes:
            count = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
            if count == 0:
                break
            step = max(50, count // 20)  # 5% at a time: stop close to the bound
            batch = conn.execute(
                "DELETE FROM spans WHERE (trace_id, span_id) IN (SELECT trace_id, span_id FROM spans ORDER BY received_ns LIMIT ?)",
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


def summarize(run_id: str, spans: list[sqlite3.Row], current: sqlite3.Row | None) -> dict[str, Any]:
    """A run's row from its spans: the event-log trace decides when present, SDK spans otherwise."""
    world = [s for s in spans if s["source"] == "world"]
    basis = world or spans
    attributes = [json.loads(s["attributes"]) for s in basis]
    root = next((s for s, a in zip(basis, attributes) if s["name"].startswith("run ") and s["source"] == "world"), None)
    root_attrs = json.loads(root["attributes"]) if root else {}
    status = root_attrs.get("workflow.run.status")
    if status is None:
        sdk_status = [
            a.get("workflow.run.status")
            for s, a in sorted(zip(basis, attributes), key=lambda x: x[0]["end_ns"])
            if a.get("workflow.run.status")
        ]
        status = (current["world_status"] if current and current["world_status"] else None) or (
            sdk_status[-1] if sdk_status else "running"
        )
    names = [a.get("workflow.name") for a in attributes if a.get("workflow.name")]
    starts = [s["start_ns"] for s in basis]
    if current and current["start_ns"]:
        starts.append(current["start_ns"])
    steps = {a.get("step.id") for a in attributes if a.get("step.id")}
    # errors = failed attempts, plus one for a run that failed without a failed attempt
    if world:
        failures = sum(1 for s in world if s["status_code"] == 2 and s["name"].startswith("attempt "))
        run_failed = root is not None and root["status_code"] == 2
    else:
        failures = sum(1 for s in spans if s["status_code"] == 2 and s["name"] == "step.execute")
        run_failed = any(s["status_code"] == 2 and s["name"].startswith(("WORKFLOW ", "workflow.run ")) for s in spans)
    errors = failures + (1 if run_failed and not failures else 0)
    return {
        "run_id": run_id,
        "workflow_name": names[0] if names else (current["workflow_name"] if current else None),
        "status": status,
        "start_ns": min(starts) if starts else None,
        "end_ns": root["end_ns"]
        if root
        else (max(s["end_ns"] for s in basis) if basis and status in ("completed", "failed", "cancelled") else None),
        "steps": len(steps),
        "errors": errors,
        "benign": sum(1 for s in spans if s["benign"]),
        "trace_id": root["trace_id"] if root else (basis[0]["trace_id"] if basis else None),
        "updated_ns": time.time_ns(),
    }
