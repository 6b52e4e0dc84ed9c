"""Read-side queries over the store: runs (paged), a run's stitched view, a trace."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from telemetry.reading import workflow_needles
from telemetry.world import TERMINAL_STATUSES, epoch_ns

from .store import decode_waits
from .summaries import EVENT_LOG_SCOPE, Wait, duration_ms

__all__ = [
    "TRACE_ID",
    "QueryError",
    "check_trace_url_template",
    "list_runs",
    "lookup_run",
    "run_events",
    "run_json",
    "run_view",
    "sentry_drops",
    "span_detail",
    "span_json",
    "stitched_spans",
    "trace_spans",
    "trace_url",
    "wait_json",
]


TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")

#: A run's stitched spans: every span carrying its run id, plus the rest of its event-log trace (the
#: app's spans there may not carry the run id). Event-log spans are told by their instrumentation
#: scope, the same whether the collector's tailer built them or they came over OTLP.
_STITCHED = (
    "run_id = :run_id OR trace_id IN (SELECT DISTINCT trace_id FROM spans WHERE run_id = :run_id AND scope = :scope)"
)


#: The app's read-only world calls (``world.runs.get``, ``world.events.list``, ``world.hooks.getByToken``,
#: ``world.streams.readFromStream``, ``…getStreamInfo``), as the SDK names their spans. Made outside the
#: run's own trace they are someone asking about the run (a status page, a stream reader, a client
#: waiting for a hook), not the run's work: the real harness makes ~140 of them for 11 runs.
_POLL = re.compile(r"world\.\w+\.(?:get|list|read)\w*")

#: How many of a run's waits the runs list sends (the oldest first); a page has them all.
_LISTED_WAITS = 20

#: The placeholders a trace link template may hold.
_PLACEHOLDERS = ("{trace_id}", "{run_id}")


class QueryError(ValueError):
    """A bad query parameter (answered with 400)."""


def check_trace_url_template(template: str) -> None:
    """A link template the run pages can use: an http(s) URL naming ``{trace_id}`` or ``{run_id}``.
    Raises ValueError saying what is wrong."""
    parts = urllib.parse.urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--trace-url-template: not an http(s) URL: {template!r}")
    if not any(p in template for p in _PLACEHOLDERS):
        raise ValueError(
            f"--trace-url-template: {template!r} names neither {{trace_id}} nor {{run_id}}"
            " (example: https://grafana.example/explore?left=...{trace_id}...)"
        )


def trace_url(template: str | None, trace_id: str | None, run_id: str) -> str | None:
    """The template with the run's trace id and run id put in (URL-quoted); None without a template,
    or when it needs a trace id the run does not have yet. Only the placeholders are replaced: the
    rest (Grafana's JSON in a query string, say) stays as written, braces and all."""
    if not template or ("{trace_id}" in template and not trace_id):
        return None
    return template.replace("{trace_id}", urllib.parse.quote(trace_id or "", safe="")).replace(
        "{run_id}", urllib.parse.quote(run_id, safe="")
    )


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
    return epoch_ns(moment)


def stitched_spans(conn: sqlite3.Connection, run_id: str, columns: str = "*") -> list[sqlite3.Row]:
    """A run's stitched spans (``columns`` of them, plus ``trace_id, span_id, parent_span_id, name``),
    in start order: every span carrying its run id and the rest of its event-log trace, less the
    spans of other runs and the polling (see ``own_spans``)."""
    rows = conn.execute(
        f"SELECT {columns}, trace_id AS o_trace, span_id AS o_span, parent_span_id AS o_parent, name AS o_name,"
        f" run_id AS o_run, scope AS o_scope FROM spans WHERE {_STITCHED} ORDER BY start_ns, span_id",
        {"run_id": run_id, "scope": EVENT_LOG_SCOPE},
    ).fetchall()
    return own_spans(rows, run_id)


def own_spans(rows: Sequence[sqlite3.Row], run_id: str) -> list[sqlite3.Row]:
    """The run's own work among the rows stitched for it (each with ``o_trace, o_span, o_parent,
    o_name, o_run, o_scope``), in their order. Left out:

    - spans of another run: a span belongs to the run its nearest ancestor-or-self carrying
      ``workflow.run.id`` names (a step that starts a child workflow puts the child's whole run in
      this trace; the child's spans are the child's page's);
    - polling: outside the run's own (event-log) trace, a part of a trace whose topmost span here is
      a read-only world call (``world.runs.get`` asked once a second by a status page is not the run).

    Linear in the rows: each ancestor chain is walked once, and only where there is something to
    leave out (another run's id, or a trace other than the run's own).
    """
    own_traces = {r["o_trace"] for r in rows if r["o_run"] == run_id and r["o_scope"] == EVENT_LOG_SCOPE}
    others = any(r["o_run"] not in (None, run_id) for r in rows)
    if not others:  # only traces other than the run's own can hold polling: walk just those
        foreign = [r for r in rows if r["o_trace"] not in own_traces]
        if not foreign:
            return list(rows)
        dropped = {id(r) for r in _walk(foreign, run_id, own_traces, keep=False)}
        return [r for r in rows if id(r) not in dropped]
    return _walk(rows, run_id, own_traces, keep=True)


def _walk(rows: Sequence[sqlite3.Row], run_id: str, own_traces: set[str], *, keep: bool) -> list[sqlite3.Row]:
    """``own_spans``' rule over ``rows``: the rows kept (``keep``) or the rows left out."""
    by_id = {(r["o_trace"], r["o_span"]): r for r in rows}
    owner: dict[tuple[str, str], tuple[str | None, str]] = {}  # span → (its run, the name of its topmost span)
    for row in rows:
        key = (row["o_trace"], row["o_span"])
        chain: list[tuple[str, str]] = []
        on_chain: set[tuple[str, str]] = set()
        found: tuple[str | None, str] | None = None
        current: tuple[str, str] | None = key
        while current is not None and current not in owner:
            if current in on_chain:  # a parent cycle (hostile input): stop here
                break
            chain.append(current)
            on_chain.add(current)
            parent = by_id[current]["o_parent"]
            current = (current[0], parent) if parent and (current[0], parent) in by_id else None
        if current is not None and current in owner:
            found = owner[current]
        for link in reversed(chain):  # from the top down: a span's own run id beats its ancestors'
            here = by_id[link]
            run = here["o_run"]
            if found is None:
                found = (run, here["o_name"])
            elif run:
                found = (run, found[1])
            owner[link] = found
    out = []
    for row in rows:
        run, top = owner[(row["o_trace"], row["o_span"])]
        mine = run in (None, run_id) and not (row["o_trace"] not in own_traces and _POLL.fullmatch(top))
        if mine == keep:
            out.append(row)
    return out


def wait_json(wait: Wait) -> dict[str, Any]:
    return {
        "kind": wait.kind,
        "id": wait.id,
        "since": _iso(wait.since_ns),
        "sinceNs": wait.since_ns,
        "token": wait.token,
        "resumeAt": wait.resume_at,
        "name": wait.name,
        "attempt": wait.attempt,
    }


def run_json(
    row: sqlite3.Row, *, trace_url_template: str | None = None, max_waits: int | None = None
) -> dict[str, Any]:
    """A run's row as the API sends it; ``waitingOn`` oldest first (at most ``max_waits`` of them,
    ``waitingCount`` says how many there are)."""
    start, end = row["start_ns"], row["end_ns"]
    waits = sorted(decode_waits(row["waiting"]), key=lambda w: (w.since_ns, w.id))
    return {
        "runId": row["run_id"],
        "workflowName": row["workflow_name"],
        "status": row["status"],
        "startedAt": _iso(start),
        "completedAt": _iso(end),
        "startNs": start,
        "durationMs": _whole_ms(duration_ms(start, end)),
        "steps": row["steps"],
        "errors": row["errors"],
        "benignConflicts": row["benign"],
        "traceId": row["trace_id"],
        "traceUrl": trace_url(trace_url_template, row["trace_id"], row["run_id"]),
        "waitingOn": [wait_json(w) for w in waits[:max_waits]],
        "waitingCount": len(waits),
    }


def _whole_ms(ms: float | None) -> int | None:
    """Durations go out as whole milliseconds (no float noise such as 470.99999999999994)."""
    return None if ms is None else round(ms)


def span_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "traceId": row["trace_id"],
        "spanId": row["span_id"],
        "parentSpanId": row["parent_span_id"] or None,
        "name": row["name"],
        "kind": row["kind"],
        "startTimeUnixNano": row["start_ns"],
        "endTimeUnixNano": row["end_ns"],
        "durationMs": _whole_ms((row["end_ns"] - row["start_ns"]) / 1e6),
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
    stuck_s: float | None = None,
    now_ns: int | None = None,
    trace_url_template: str | None = None,
) -> dict[str, Any]:
    """Newest first; the cursor is ``<start_ns>:<run_id>`` of the last run returned.

    ``stuck_s``: only live runs that have waited on the same things for at least that long (their
    newest wait is that old: no hook, sleep, step or retry of theirs began or ended since).
    """
    where: list[str] = ["1=1"]
    params: list[str | int] = []
    if workflow:  # the full id, the function or the file, as ``wft runs --workflow`` (literally: no LIKE wildcards)
        full, suffix, infix = workflow_needles(workflow)
        by_file = " OR instr(workflow_name, ?) > 0" if infix else ""
        where.append(f"(workflow_name = ? OR substr(workflow_name, -?) = ?{by_file})")
        params += [full, len(suffix), suffix, *([infix] if infix else [])]
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
    if stuck_s is not None:
        now = time.time_ns() if now_ns is None else now_ns
        where.append(
            f"waiting IS NOT NULL AND status NOT IN ({', '.join('?' * len(TERMINAL_STATUSES))})"
            " AND (SELECT max(json_extract(value, '$.since_ns')) FROM json_each(waiting)) <= ?"
        )
        params += [*sorted(TERMINAL_STATUSES), now - int(stuck_s * 1e9)]
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
    data = [run_json(r, trace_url_template=trace_url_template, max_waits=_LISTED_WAITS) for r in rows]
    return {"data": data, "cursor": next_cursor, "hasMore": has_more}


def run_view(conn: sqlite3.Connection, run_id: str, *, trace_url_template: str | None = None) -> dict[str, Any] | None:
    """The run, its stitched spans (every span carrying its run id, plus the rest of its
    event-log trace, less other runs' spans and polling: ``own_spans``), and its events."""
    run = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if run is None:
        return None
    spans = stitched_spans(conn, run_id)
    events = conn.execute(
        "SELECT event_id, event_type, correlation_id, created_ns, data FROM run_events WHERE run_id = ?"
        " ORDER BY event_id",
        (run_id,),
    ).fetchall()
    return {
        "run": run_json(run, trace_url_template=trace_url_template),
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
    """The run of a trace, as its event-log spans say (an app span's run id otherwise)."""
    row = conn.execute(
        "SELECT run_id FROM spans WHERE trace_id = ? AND run_id IS NOT NULL ORDER BY scope = ? DESC LIMIT 1",
        (trace_id.lower(), EVENT_LOG_SCOPE),
    ).fetchone()
    return str(row[0]) if row else None


def run_events(conn: sqlite3.Connection, run_id: str, *, after: str | None, limit: int) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT event_id, event_type, correlation_id, created_ns, data FROM run_events"
        " WHERE run_id = ? AND event_id > ? ORDER BY event_id LIMIT ?",
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
