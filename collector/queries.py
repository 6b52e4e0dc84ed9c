"""Read-side queries over the store: runs (paged), a run's stitched view, a trace."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "STITCHED",
    "TRACE_ID",
    "QueryError",
    "list_runs",
    "lookup_run",
    "run_events",
    "run_json",
    "run_view",
    "sentry_drops",
    "span_detail",
    "span_json",
    "trace_spans",
]


TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")

#: A run's stitched spans: every span carrying its run id, plus the rest of its event-log trace.
STITCHED = "run_id = ? OR trace_id IN (SELECT DISTINCT trace_id FROM spans WHERE run_id = ? AND source = 'world')"


class QueryError(ValueError):
    """A bad query parameter (answered with 400)."""


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str | None, name: str) -> int | None:
    """An ISO-8601 time or epoch milliseconds, as ns."""
    if value in (None, ""):
        return None
    if value.isdigit():
        return int(value) * 1_000_000
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{name}: expected an ISO-8601 time or epoch milliseconds, got {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1e9)


def run_json(row: sqlite3.Row) -> dict[str, Any]:
    start, end = row["start_ns"], row["end_ns"]
    return {
        "runId": row["run_id"],
        "workflowName": row["workflow_name"],
        "status": row["status"],
        "startedAt": _iso(start),
        "completedAt": _iso(end),
        "startNs": start,
        "durationMs": (end - start) / 1e6 if start is not None and end is not None else None,
        "steps": row["steps"],
        "errors": row["errors"],
        "benignConflicts": row["benign"],
        "traceId": row["trace_id"],
    }


def span_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "traceId": row["trace_id"],
        "spanId": row["span_id"],
        "parentSpanId": row["parent_span_id"] or None,
        "name": row["name"],
        "kind": row["kind"],
        "startTimeUnixNano": row["start_ns"],
        "endTimeUnixNano": row["end_ns"],
        "durationMs": (row["end_ns"] - row["start_ns"]) / 1e6,
        "status": {"code": row["status_code"], "message": row["status_message"]},
        "attributes": json.loads(row["attributes"]),
        "events": json.loads(row["events"]),
        "links": json.loads(row["links"]),
        "resource": json.loads(row["resource"]),
        "scope": row["scope"],
        "source": row["source"],
        "benign": bool(row["benign"]),
    }


def list_runs(
    conn: sqlite3.Connection,
    *,
    workflow: str | None = None,
    status: str | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """Newest first; the cursor is ``<start_ns>:<run_id>`` of the last run returned."""
    where, params = ["1=1"], []
    if workflow:
        where.append("(workflow_name = ? OR workflow_name LIKE ?)")
        params += [workflow, f"%//{workflow}"]
    if status:
        where.append("status = ?")
        params.append(status)
    since_ns, until_ns = parse_time(since, "since"), parse_time(until, "until")
    if since_ns is not None:
        where.append("start_ns >= ?")
        params.append(since_ns)
    if until_ns is not None:
        where.append("start_ns < ?")
        params.append(until_ns)
    if cursor:
        try:
            start_text, run_id = cursor.split(":", 1)
            start_ns = int(start_text)
        except ValueError:
            raise QueryError(f"cursor: not a cursor this API returned: {cursor!r}") from None
        where.append("(coalesce(start_ns, 0) < ? OR (coalesce(start_ns, 0) = ? AND run_id < ?))")
        params += [start_ns, start_ns, run_id]
    rows = conn.execute(
        f"SELECT * FROM runs WHERE {' AND '.join(where)} ORDER BY coalesce(start_ns, 0) DESC, run_id DESC LIMIT ?",
        [*params, limit + 1],
    ).fetchall()
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = f"{rows[-1]['start_ns'] or 0}:{rows[-1]['run_id']}" if has_more and rows else None
    return {"data": [run_json(r) for r in rows], "cursor": next_cursor, "hasMore": has_more}


def run_view(conn: sqlite3.Connection, run_id: str) -> dict[str, Any] | None:
    """The run, its stitched spans (every span carrying its run id, plus the rest of its
    event-log trace), and its events."""
    run = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if run is None:
        return None
    spans = conn.execute(
        f"SELECT * FROM spans WHERE {STITCHED} ORDER BY start_ns, span_id", (run_id, run_id)
    ).fetchall()
    events = conn.execute(
        "SELECT event_id, event_type, correlation_id, created_ns, data FROM run_events WHERE run_id = ? ORDER BY event_id",
        (run_id,),
    ).fetchall()
    return {
        "run": run_json(run),
        "sentryDropped": sentry_drops(conn, run_id),
        "spans": [span_json(s) for s in spans],
        "events": [
            {
                "eventId": e["event_id"],
                "eventType": e["event_type"],
                "correlationId": e["correlation_id"],
                "createdAt": _iso(e["created_ns"]),
                "eventData": json.loads(e["data"]) if e["data"] else None,
            }
            for e in events
        ],
    }


def trace_spans(conn: sqlite3.Connection, trace_id: str) -> list[dict[str, Any]]:
    return [
        span_json(s)
        for s in conn.execute("SELECT * FROM spans WHERE trace_id = ? ORDER BY start_ns, span_id", (trace_id.lower(),))
    ]


def sentry_drops(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    """Sentry events the relay dropped for this run, per rule."""
    rows = conn.execute(
        "SELECT rule, count, last_message FROM sentry_drops WHERE run_id = ? ORDER BY rule", (run_id,)
    ).fetchall()
    return [{"rule": d["rule"], "count": d["count"], "lastMessage": d["last_message"]} for d in rows]


def span_detail(conn: sqlite3.Connection, trace_id: str, span_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT * FROM spans WHERE trace_id = ? AND span_id = ?", (trace_id.lower(), span_id.lower())
    ).fetchone()
    return span_json(row) if row else None


def lookup_run(conn: sqlite3.Connection, ident: str) -> str | None:
    """The run a run id or a trace id belongs to (for search and deep links)."""
    if TRACE_ID.match(ident):
        return run_for_trace(conn, ident)
    return ident if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (ident,)).fetchone() else None


def run_for_trace(conn: sqlite3.Connection, trace_id: str) -> str | None:
    row = conn.execute(
        "SELECT run_id FROM spans WHERE trace_id = ? AND run_id IS NOT NULL ORDER BY source = 'world' DESC LIMIT 1",
        (trace_id.lower(),),
    ).fetchone()
    return row[0] if row else None


def run_events(conn: sqlite3.Connection, run_id: str, *, after: str | None, limit: int) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT event_id, event_type, correlation_id, created_ns, data FROM run_events WHERE run_id = ? AND event_id > ? ORDER BY event_id LIMIT ?",
        (run_id, after or "", limit + 1),
    ).fetchall()
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {
        "data": [
            {
                "eventId": r["event_id"],
                "eventType": r["event_type"],
                "correlationId": r["correlation_id"],
                "createdAt": _iso(r["created_ns"]),
                "eventData": json.loads(r["data"]) if r["data"] else None,
            }
            for r in rows
        ],
        "cursor": rows[-1]["event_id"] if has_more and rows else None,
        "hasMore": has_more,
    }
