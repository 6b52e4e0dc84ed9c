"""Read-side queries over the store: runs (paged), a run's stitched view, a trace."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Protocol, TypeVar

from telemetry.reading import workflow_needles
from telemetry.world import TERMINAL_STATUSES, epoch_ns

from .store import SPAN_COLUMNS, SpanReader, as_sql_row, decode_waits
from .summaries import EVENT_LOG_SCOPE, Wait, duration_ms, shown_waits

__all__ = [
    "TRACE_ID",
    "QueryError",
    "check_trace_url_template",
    "finite",
    "list_runs",
    "lookup_run",
    "run_events",
    "own_app_rows",
    "own_decoded_spans",
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

#: The spans a query read from their blobs are laid out in this per-connection temp table, the
#: previous layout's ``spans`` columns, so callers keep selecting with SQL (``json_extract`` and all).
_LAID_OUT = "temp.wft_spans"
_LAY_OUT = (
    f"CREATE TEMP TABLE IF NOT EXISTS wft_spans ({', '.join(SPAN_COLUMNS)})",
    f"DELETE FROM {_LAID_OUT}",
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


def _laid_out(
    conn: sqlite3.Connection, read: Callable[[SpanReader], list[tuple[Any, ...]]], select: str
) -> list[sqlite3.Row]:
    """``select`` (over ``_LAID_OUT``) after laying out the spans ``read`` gets from their blobs;
    one read transaction, so a commit in between cannot show half a write."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        spans = read(SpanReader(conn))
        for statement in _LAY_OUT:
            conn.execute(statement)
        conn.executemany(
            f"INSERT INTO {_LAID_OUT} VALUES ({','.join('?' * len(SPAN_COLUMNS))})", [as_sql_row(s) for s in spans]
        )
        rows = conn.execute(select).fetchall()
        conn.execute(f"DELETE FROM {_LAID_OUT}")
    finally:
        if own and conn.in_transaction:
            conn.execute("COMMIT")
    return rows


def _stitched(reader: SpanReader, run_id: str) -> list[tuple[Any, ...]]:
    """Every span carrying the run id, plus the rest of its event-log traces (the app's spans there
    may not carry the run id). Event-log spans are told by their instrumentation scope, the same
    whether the collector's tailer built them or they came over OTLP."""
    spans = reader.run(run_id)
    scope = SPAN_COLUMNS.index("scope")
    for trace_id in sorted({s[0] for s in spans if s[scope] == EVENT_LOG_SCOPE}):
        spans += reader.trace(trace_id, other_than_run=run_id)
    return spans


def stitched_spans(conn: sqlite3.Connection, run_id: str, columns: str = "*") -> list[sqlite3.Row]:
    """A run's stitched spans (``columns`` of them, SQL over the previous layout's ``spans`` columns,
    plus ``o_trace, o_span, o_parent, o_name, o_run, o_scope``), in start order: every span carrying
    its run id and the rest of its event-log trace, less the spans of other runs and the polling
    (see ``own_spans``).

    Columns that are plain names or ``json_extract(attributes, '$."name"') AS alias`` (what the run
    page and the analysis ask for) are taken straight from the decoded spans; anything else is
    answered by SQLite over the spans laid out in a temp table."""
    wanted = _wanted(columns)
    if wanted is None:
        rows = _laid_out(
            conn,
            lambda reader: _stitched(reader, run_id),
            f"SELECT {columns}, trace_id AS o_trace, span_id AS o_span, parent_span_id AS o_parent, name AS o_name,"
            f" run_id AS o_run, scope AS o_scope FROM {_LAID_OUT} ORDER BY start_ns, span_id",
        )
        return own_spans(rows, run_id)
    return own_spans(_rows(conn, _stitched_in_order(conn, run_id), *wanted), run_id)


_START_ORDER = itemgetter(SPAN_COLUMNS.index("start_ns"), SPAN_COLUMNS.index("span_id"))


def _stitched_in_order(conn: sqlite3.Connection, run_id: str) -> list[tuple[Any, ...]]:
    """``_stitched`` in start order, read in one snapshot (a commit in between cannot show half a write)."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        spans = _stitched(SpanReader(conn), run_id)
    finally:
        if own and conn.in_transaction:
            conn.execute("COMMIT")
    spans.sort(key=_START_ORDER)
    return spans


def _span_dict(s: tuple[Any, ...]) -> dict[str, Any]:
    """``span_json`` of a decoded span (its JSON values as they are, not through JSON text)."""
    return {
        "traceId": s[0],
        "spanId": s[1],
        "parentSpanId": s[2] or None,
        "name": s[3],
        "kind": s[4],
        "startTimeUnixNano": s[5],
        "endTimeUnixNano": s[6],
        "durationMs": _whole_ms((s[6] - s[5]) / 1e6),
        "status": {"code": s[7], "message": s[8]},
        "attributes": s[14],
        "events": s[15],
        "links": s[16],
        "resource": s[17],
        "scope": s[11],
        "source": s[12],
        "benign": bool(s[13]),
    }


#: what ``own_spans`` reads of every row: alias → position in ``SPAN_COLUMNS``
_ORIGIN = {"o_trace": 0, "o_span": 1, "o_parent": 2, "o_name": 3, "o_run": 9, "o_scope": 11}
_NAME = re.compile(r"\s*(\w+)\s*")
_EXTRACT = re.compile(r"""\s*json_extract\(attributes,\s*'\$\."([^"']+)"'\)\s+AS\s+(\w+)\s*""", re.IGNORECASE)
_JSON_VALUED = frozenset({"attributes", "events", "links", "resource"})
#: (plain columns, JSON-valued columns, attributes: each a list of (alias, position or attribute name))
Wanted = tuple[list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, str]]]


def _wanted(columns: str) -> Wanted | None:
    """The columns asked for, when each is a plain name or ``json_extract(attributes, '$."name"') AS
    alias``; None when SQL must answer."""
    if columns.strip() == "*":
        parts = list(SPAN_COLUMNS)
    else:
        parts, depth, start = [], 0, 0
        for i, char in enumerate(columns):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 0:
                parts.append(columns[start:i])
                start = i + 1
        parts.append(columns[start:])
    plain: list[tuple[str, int]] = []
    valued: list[tuple[str, int]] = []
    attributes: list[tuple[str, str]] = []
    for part in parts:
        name, extract = _NAME.fullmatch(part), _EXTRACT.fullmatch(part)
        if name and name.group(1) in SPAN_COLUMNS:
            column = name.group(1)
            (valued if column in _JSON_VALUED else plain).append((column, SPAN_COLUMNS.index(column)))
        elif extract:
            attributes.append((extract.group(2), extract.group(1)))
        else:
            return None
    return plain, valued, attributes


def _rows(
    conn: sqlite3.Connection,
    spans: list[tuple[Any, ...]],
    plain: list[tuple[str, int]],
    valued: list[tuple[str, int]],
    attributes: list[tuple[str, str]],
) -> list[sqlite3.Row]:
    """The spans as rows of the columns asked for (then ``_ORIGIN``'s), as SQLite would give them:
    JSON values as JSON text, ``json_extract`` of a scalar as the scalar (true as 1)."""
    names = [a for a, _ in plain] + [a for a, _ in valued] + [a for a, _ in attributes] + list(_ORIGIN)
    shape = conn.execute(f"SELECT {', '.join(f'NULL AS {n}' for n in names)}")  # the rows' column names
    shape.fetchall()
    positions = [i for _, i in plain] + list(_ORIGIN.values())
    keys = [k for _, k in attributes]
    texts: dict[int, str] = {}  # a blob's spans share their resource dict: its JSON once
    rows = []
    for s in spans:
        picked = [s[i] for i in positions]
        json_values = [_cached_text(s[i], texts) if i == 17 else _json_text(s[i]) for _, i in valued]
        attrs = s[14]
        values = [attrs.get(k) for k in keys]
        if not _SCALARS.issuperset(map(type, values)):
            values = [_sql_value(v) for v in values]
        origin = picked[len(plain) :]
        rows.append(sqlite3.Row(shape, tuple(picked[: len(plain)] + json_values + values + origin)))
    return rows


#: what ``json_extract`` gives back as it is (anything else: true/false as 1/0, objects as JSON text)
_SCALARS = frozenset({str, int, float, type(None)})


def _cached_text(value: Any, texts: dict[int, str]) -> str:
    text = texts.get(id(value))
    if text is None:
        text = texts[id(value)] = _json_text(value)
    return text


def _sql_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    return _json_text(value) if isinstance(value, dict | list) else value


def _json_text(value: Any) -> str:
    return "[]" if value == [] else json.dumps(value, separators=(",", ":"), default=str)


class _Keyed(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


#: a row ``own_spans`` reads: an SQL row or a dict with its ``o_*`` keys
Origin = TypeVar("Origin", bound=_Keyed)


def own_spans(rows: Sequence[Origin], run_id: str) -> list[Origin]:
    """The run's own work among the rows stitched for it (each with ``o_trace, o_span, o_parent,
    o_name, o_run, o_scope``: SQL rows, or dicts of those), in their order. Left out:

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


def _walk(rows: Sequence[Origin], run_id: str, own_traces: set[str], *, keep: bool) -> list[Origin]:
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
    ``waitingCount`` says how many there are): a live run's ``shown_waits``."""
    start, end = row["start_ns"], row["end_ns"]
    live = row["status"] not in TERMINAL_STATUSES
    waits = sorted(shown_waits(decode_waits(row["waiting"])) if live else (), key=lambda w: (w.since_ns, w.id))
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


def finite(value: Any) -> Any:
    """``value`` with every NaN and infinity in it (nested too) as the string the OTLP-JSON mapping
    writes: "NaN", "Infinity", "-Infinity" (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _whole_ms(ms: float | None) -> int | None:
    """Durations go out as whole milliseconds (no float noise such as 470.99999999999994)."""
    return None if ms is None else round(ms)


def span_json(row: sqlite3.Row | Mapping[str, Any]) -> dict[str, Any]:
    """A span as the API sends it, from its row in the previous layout's ``spans`` columns."""
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
    if since_ns is not None:  # sort_ns is start_ns where that is known: the index serves the range
        where.append("sort_ns >= ? AND start_ns >= ?")
        params += [since_ns, since_ns]
    if until_ns is not None:
        where.append("sort_ns < ? AND start_ns < ?")
        params += [until_ns, until_ns]
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
        where.append("(sort_ns, run_id) < (?, ?)")
        params += [start_ns, run_id]
    rows = conn.execute(  # sort_ns: the start, 0 while unknown (runs_by_sort serves the order)
        f"SELECT * FROM runs WHERE {' AND '.join(where)} ORDER BY sort_ns DESC, run_id DESC LIMIT ?",
        [*params, limit + 1],
    ).fetchall()
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = f"{rows[-1]['sort_ns']}:{rows[-1]['run_id']}" if has_more and rows else None
    data = [run_json(r, trace_url_template=trace_url_template, max_waits=_LISTED_WAITS) for r in rows]
    return {"data": data, "cursor": next_cursor, "hasMore": has_more}


def run_view(conn: sqlite3.Connection, run_id: str, *, trace_url_template: str | None = None) -> dict[str, Any] | None:
    """The run, its stitched spans (every span carrying its run id, plus the rest of its
    event-log trace, less other runs' spans and polling: ``own_spans``), and its events."""
    run = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if run is None:
        return None
    spans = [_span_dict(s) for s in own_decoded_spans(conn, run_id)]
    events = conn.execute(
        "SELECT event_id, event_type, correlation_id, created_ns, data FROM run_events WHERE run_id = ?"
        " ORDER BY event_id",
        (run_id,),
    ).fetchall()
    return {
        "run": run_json(run, trace_url_template=trace_url_template),
        "sentryDropped": sentry_drops(conn, run_id),
        "spans": spans,
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


def own_decoded_spans(conn: sqlite3.Connection, run_id: str) -> list[tuple[Any, ...]]:
    """``stitched_spans``' spans as the store decodes them (tuples in ``SPAN_COLUMNS`` order, JSON
    values as Python values), in start order: for readers of every span of a long run (the run view,
    the analysis), which would otherwise pay for rows and JSON text they read straight back. The
    run page reads the same spans with only the fields it shows decoded (``waterfall.PageSpan``)."""
    decoded = _stitched_in_order(conn, run_id)
    run, scope = SPAN_COLUMNS.index("run_id"), SPAN_COLUMNS.index("scope")
    own_traces = {s[0] for s in decoded if s[run] == run_id and s[scope] == EVENT_LOG_SCOPE}
    if all(s[0] in own_traces and s[run] in (None, run_id) for s in decoded):
        return decoded  # nothing own_spans would leave out (no other run, no trace but the run's own)
    rows = _rows(conn, decoded, [], [], [])  # just what own_spans reads
    kept = {id(row) for row in own_spans(rows, run_id)}
    return [s for s, row in zip(decoded, rows, strict=True) if id(row) in kept]


def own_app_rows(conn: sqlite3.Connection, run_id: str, columns: str) -> list[sqlite3.Row]:
    """``stitched_spans(conn, run_id, columns)`` less the event-log spans: the app's own spans of
    the run, for readers that want only those (the analysis). Rows are made for them alone, not
    for the event-log spans too (a 10,000-step run has 20,000 of those and often no app span).
    ``columns``: plain names and ``json_extract(attributes, …) AS alias`` only."""
    wanted = _wanted(columns)
    if wanted is None:
        raise ValueError(f"own_app_rows: columns must be plain names or json_extract of attributes: {columns!r}")
    scope = SPAN_COLUMNS.index("scope")
    return _rows(conn, [s for s in own_decoded_spans(conn, run_id) if s[scope] != EVENT_LOG_SCOPE], *wanted)


def trace_spans(conn: sqlite3.Connection, trace_id: str) -> list[dict[str, Any]]:
    spans = SpanReader(conn).trace(trace_id.lower())
    return [_span_dict(s) for s in sorted(spans, key=lambda s: (s[5], s[1]))]


def sentry_drops(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    """Sentry events the relay dropped for this run, per rule."""
    rows = conn.execute(
        "SELECT rule, count, last_message FROM sentry_drops WHERE run_id = ? ORDER BY rule", (run_id,)
    ).fetchall()
    return [{"rule": d["rule"], "count": d["count"], "lastMessage": d["last_message"]} for d in rows]


def span_detail(conn: sqlite3.Connection, trace_id: str, span_id: str) -> dict[str, Any] | None:
    span = SpanReader(conn).span(trace_id.lower(), span_id.lower())
    return _span_dict(span) if span else None


def lookup_run(conn: sqlite3.Connection, ident: str) -> str | None:
    """The run a run id or a trace id belongs to (for search and deep links)."""
    if TRACE_ID.match(ident):
        return run_for_trace(conn, ident)
    return ident if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (ident,)).fetchone() else None


def run_for_trace(conn: sqlite3.Connection, trace_id: str) -> str | None:
    """The run of a trace, as its event-log spans say (an app span's run id otherwise)."""
    row = conn.execute(
        "SELECT run_id FROM span_index WHERE trace_id = ? AND run_id IS NOT NULL ORDER BY log DESC LIMIT 1",
        (trace_id.lower(),),
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
