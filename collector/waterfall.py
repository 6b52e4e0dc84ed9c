"""A run's waterfall in the compact form the run page draws: one row per run, step, sleep and
hook (attempts are segments of their step's row, hook receipts are marks), the SDK's own spans
on the same time axis, why a finished run failed, and what a live run waits on. Compact on
purpose: a 10,000-step run is a few MB, not tens.

Rows are event-log entities, told by ``workflow.span.kind`` (``summaries.entity_kind``); every
other span of the run (``queries.own_decoded_spans``: other runs' spans and polling left out) is an
SDK span, placed at its real time. A live run also gets *open* rows, drawn up to now, for what has
begun but has no span yet: the run itself, and each thing it waits on (``runs.waiting``) — a hook,
a sleep, a step queued or running, a step between a failed attempt and its retry.

An ended run's waterfall changes only when the store gets something new of it: ``ended_run_stamp``
says, in a few index lookups, whether it did (``api.WaterfallCache`` sends the kept answer while not).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from telemetry.runtrace import short_name
from telemetry.semconv import ERROR_TYPE, STEP_ATTEMPT, STEP_ID, STEP_NAME, WORKFLOW_SPAN_KIND, SpanKinds
from telemetry.world import TERMINAL_STATUSES

from .queries import own_decoded_spans, run_json, sentry_drops, wait_json
from .store import SPAN_COLUMNS, decode_waits
from .summaries import EVENT_LOG_SCOPE, STEP_STATUS, Wait, WaitKinds, entity_kind

__all__ = ["Built", "build_waterfall", "ended_run_stamp", "waterfall"]

#: on a failed attempt: how long after it the next one started (the backoff, as it happened)
RETRY_DELAY_MS = "step.retry.delay_ms"
#: on a span the run's end closed (a step in flight when the run was cancelled)
CLOSED_BY_RUN_END = "workflow.closed_by_run_end"
_ERROR = 2  # OTLP status code ERROR
_STOPPED = ("failed", "cancelled")


#: what the page reads of a span's attributes: key in the span dicts → attribute name
_ATTRIBUTES = (
    ("span_kind", WORKFLOW_SPAN_KIND),
    ("attempt", STEP_ATTEMPT),
    ("step_status", STEP_STATUS),
    ("step_name", STEP_NAME),
    ("step_id", STEP_ID),
    ("retry_delay", RETRY_DELAY_MS),
    ("error_type", ERROR_TYPE),
    ("closed_by_end", CLOSED_BY_RUN_END),
)
_FIELDS = ("trace_id", "span_id", "parent_span_id", "name", "start_ns", "end_ns", "status_code", "status_message")
_AT = tuple(SPAN_COLUMNS.index(f) for f in _FIELDS)
_BENIGN, _EVENTS, _ATTRS, _RUN, _SCOPE = (
    SPAN_COLUMNS.index(c) for c in ("benign", "events", "attributes", "run_id", "scope")
)

#: one span as ``_failure`` and ``_sdk_rows`` read it: the fields above, ``benign``, ``events`` (a list)
#: and the attributes ``_ATTRIBUTES`` names
Span = dict[str, Any]
_TRACE, _SPAN, _PARENT, _NAME, _START, _END, _STATUS = _AT[:7]


def _span(t: tuple[Any, ...]) -> Span:
    """A decoded span as a small dict of what the page reads (built only for the few spans that need
    one: the SDK's, and a stopped run's entities when its failure is told)."""
    span = dict(zip(_FIELDS, [t[i] for i in _AT], strict=True))
    attributes = t[_ATTRS]
    span["benign"], span["events"] = t[_BENIGN], t[_EVENTS] or []
    for key, name in _ATTRIBUTES:
        span[key] = attributes.get(name)
    return span


class Built(NamedTuple):
    """A waterfall and the event-log traces it was stitched from (what ``ended_run_stamp`` watches)."""

    view: dict[str, Any]
    traces: frozenset[str]


def waterfall(
    conn: sqlite3.Connection, run_id: str, *, now_ns: int | None = None, trace_url_template: str | None = None
) -> dict[str, Any] | None:
    """The run page's data; ``now_ns`` (default: now) is where open rows end."""
    built = build_waterfall(conn, run_id, now_ns=now_ns, trace_url_template=trace_url_template)
    return None if built is None else built.view


def ended_run_stamp(conn: sqlite3.Connection, run_id: str, traces: Iterable[str]) -> tuple[Any, ...] | None:
    """What an ended run's waterfall is built from, in a few index lookups (no blob is read): its
    summary row, its blobs (count, newest, dead slots: a span re-sent or dropped), the index rows of
    the event-log ``traces`` it was stitched from (the app's spans there need not carry the run id),
    its events and its Sentry drops. Two equal stamps, read where the run's traces are the same,
    mean the same waterfall but for ``nowNs``. None for a live run (its open rows grow with the
    clock) or a run not in the store: nothing to keep."""
    run = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if run is None or run["status"] not in TERMINAL_STATUSES:
        return None
    blobs = conn.execute("SELECT count(*), max(blob_id), total(dead) FROM blobs WHERE run_id = ?", (run_id,)).fetchone()
    per_trace = tuple(
        (
            trace_id,
            *conn.execute("SELECT count(*), max(blob_id) FROM span_index WHERE trace_id = ?", (trace_id,)).fetchone(),
        )
        for trace_id in sorted(traces)
    )
    events = conn.execute("SELECT count(*) FROM run_events WHERE run_id = ?", (run_id,)).fetchone()
    drops = conn.execute(
        "SELECT rule, count, last_ns FROM sentry_drops WHERE run_id = ? ORDER BY rule", (run_id,)
    ).fetchall()
    return (tuple(run), tuple(blobs), per_trace, tuple(events), tuple(tuple(d) for d in drops))


def build_waterfall(
    conn: sqlite3.Connection, run_id: str, *, now_ns: int | None = None, trace_url_template: str | None = None
) -> Built | None:
    """``waterfall``, with the traces it was stitched from."""
    run = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if run is None:
        return None
    spans = own_decoded_spans(conn, run_id)  # tuples, read in place: a 20k-span run is read on every view
    traces = frozenset(t[_TRACE] for t in spans if t[_RUN] == run_id and t[_SCOPE] == EVENT_LOG_SCOPE)
    live = run["status"] not in TERMINAL_STATUSES
    waits = decode_waits(run["waiting"]) if live else ()
    now = time.time_ns() if now_ns is None else now_ns
    starts = [w.since_ns for w in waits]
    if spans:
        starts.append(spans[0][_START])  # spans come in start order
    if run["start_ns"] is not None:
        starts.append(run["start_ns"])
    t0 = min(starts, default=0)

    def ms(ns: int) -> float:
        return _ms(ns - t0)

    def span_ms(start: int, end: int) -> float:
        return _ms(end - start)

    rows: list[dict[str, Any]] = []
    by_id: dict[tuple[str, str], dict[str, Any]] = {}
    by_step: dict[str, dict[str, Any]] = {}  # open step rows by step id
    attempts: list[tuple[Any, ...]] = []
    entities: list[tuple[Any, ...]] = []
    app: list[tuple[Any, ...]] = []
    for t in spans:
        attributes = t[_ATTRS]
        kind = entity_kind(attributes.get(WORKFLOW_SPAN_KIND))
        if kind == SpanKinds.ATTEMPT:
            attempts.append(t)
            continue
        if kind is None:
            app.append(t)
            continue
        entities.append(t)
        start, span_id, trace_id = t[_START], t[_SPAN], t[_TRACE]
        at, took = start - t0, t[_END] - start
        row: dict[str, Any] = {
            "id": span_id,
            "trace": trace_id,
            "kind": kind,
            "name": t[_NAME],
            "s": _ms(at),
            "d": _ms(took),
            "status": t[_STATUS],
            "benign": bool(t[_BENIGN]),
            "segments": [],
        }
        if kind == SpanKinds.STEP:
            row["attempts"] = attributes.get(STEP_ATTEMPT)
            row["stepStatus"] = attributes.get(STEP_STATUS)
        elif kind == SpanKinds.HOOK:
            row["marks"] = [
                {"t": ms(e["time_ns"]), "name": e["name"]}
                for e in t[_EVENTS] or ()
                if isinstance(e, dict) and e.get("name") == "hook_received"
            ]
        rows.append(row)
        by_id[(trace_id, span_id)] = row
    for t in attempts:
        attributes = t[_ATTRS]
        key = (t[_TRACE], t[_PARENT])
        parent = by_id.get(key)
        start, end = t[_START], t[_END]
        if parent is None:  # the step is still open (being retried): its row stands in until its span comes
            parent = by_id[key] = _open_step(attributes.get(STEP_NAME), ms(start), "pending")
            parent["id"], parent["trace"] = t[_SPAN], t[_TRACE]
            rows.append(parent)
            step_id = attributes.get(STEP_ID)
            if isinstance(step_id, str):
                by_step[step_id] = parent
        number = attributes.get(STEP_ATTEMPT)
        if parent.get("open"):  # an open row spans its attempts, and while live up to now
            parent["id"] = t[_SPAN]  # its label shows the latest attempt
            parent["attempts"] = max(parent["attempts"] or 0, number or 0)
            parent["d"] = round(max(parent["d"], ms(max(end, now) if live else end) - parent["s"]), 3)
        delay = attributes.get(RETRY_DELAY_MS)
        at, took = start - t0, end - start
        parent["segments"].append(
            {
                "id": t[_SPAN],
                "s": _ms(at),
                "d": _ms(took),
                "status": t[_STATUS],
                "n": number,
                "retryMs": delay if isinstance(delay, int | float) and not isinstance(delay, bool) else None,
            }
        )
    if live:
        _open_rows(rows, by_step, waits, run, ms, ms(now))
    rows.sort(key=lambda r: (r["kind"] != SpanKinds.RUN, r["s"]))  # stable: spans keep their order
    events = conn.execute("SELECT count(*) FROM run_events WHERE run_id = ?", (run_id,)).fetchone()[0]
    view = {
        "run": run_json(run, trace_url_template=trace_url_template),
        "t0": t0,
        "nowNs": now,
        "now": ms(now) if live else None,
        "rows": rows,
        "sdk": _sdk_rows([_span(t) for t in app], ms, span_ms),
        "failure": _failure(run, *([_span(t) for t in group] for group in (entities, attempts, app)))
        if run["status"] in _STOPPED
        else None,
        "eventsCount": events,
        "sentryDropped": sentry_drops(conn, run_id),
    }
    return Built(view, traces)


def _ms(ns: int) -> float:
    """Nanoseconds as milliseconds to the microsecond (what the page draws with). A whole number of
    microseconds (every world timestamp) is divided exactly, without ``round``: the same float."""
    return ns // 1000 / 1000 if ns % 1000 == 0 else round(ns / 1e6, 3)


def _open_step(name: object, start: float, state: str) -> dict[str, Any]:
    return {
        "id": None,
        "trace": None,
        "kind": SpanKinds.STEP,
        "name": f"step {short_name(name)}" if isinstance(name, str) and name else "step",
        "s": start,
        "d": 0.0,
        "status": 0,
        "benign": False,
        "segments": [],
        "attempts": 0,
        "stepStatus": state,
        "open": True,
    }


def _open_rows(
    rows: list[dict[str, Any]],
    by_step: dict[str, dict[str, Any]],
    waits: tuple[Wait, ...],
    run: sqlite3.Row,
    ms: Callable[[int], float],
    now: float,
) -> None:
    """A live run's open rows: the run itself until its span comes, and what it waits on."""
    if run["start_ns"] is not None and not any(r["kind"] == SpanKinds.RUN for r in rows):
        name = run["workflow_name"]
        start = ms(run["start_ns"])
        rows.append(
            {
                "id": None,
                "trace": None,
                "kind": SpanKinds.RUN,
                "name": f"run {short_name(name)}" if name else "run",
                "s": start,
                "d": round(max(0.0, now - start), 3),
                "status": 0,
                "benign": False,
                "segments": [],
                "open": True,
            }
        )
    for w in waits:
        since = ms(w.since_ns)
        if w.kind in (WaitKinds.HOOK, WaitKinds.SLEEP):
            rows.append(
                {
                    "id": None,
                    "trace": None,
                    "kind": w.kind,
                    "name": f"hook {w.token}" if w.kind == WaitKinds.HOOK and w.token else w.kind,
                    "s": since,
                    "d": round(max(0.0, now - since), 3),
                    "status": 0,
                    "benign": False,
                    "segments": [],
                    "open": True,
                    "resumeAt": w.resume_at,
                    "wait": wait_json(w),
                }
            )
            continue
        state = {WaitKinds.QUEUED: "queued", WaitKinds.STEP: "running", WaitKinds.RETRY: "retrying"}.get(w.kind)
        if state is None:  # a kind this version does not know (a newer store): nothing to draw
            continue
        row = by_step.get(w.id)
        if row is None:
            row = by_step[w.id] = _open_step(w.name, since, state)
            rows.append(row)
        row["stepStatus"] = state
        row["wait"] = wait_json(w)
        row["d"] = round(max(row["d"], now - row["s"]), 3)
        if w.kind == WaitKinds.STEP:  # the attempt running now: a segment up to now
            row["attempts"] = max(row["attempts"] or 0, w.attempt or 1)
            row["segments"].append(
                {
                    "id": None,
                    "s": since,
                    "d": round(max(0.0, now - since), 3),
                    "status": 0,
                    "n": w.attempt,
                    "open": True,
                }
            )
        elif w.kind == WaitKinds.RETRY:
            row["retryAt"] = w.resume_at


def _sdk_rows(
    app: list[Span], ms: Callable[[int], float], span_ms: Callable[[int, int], float]
) -> list[dict[str, Any]]:
    """The SDK's spans at their real times, as a tree: each after its parent (children by start),
    indented by depth. A span whose parent is not here (an event-log span, a span of the app's
    caller) starts a tree of its own."""
    here = {(s["trace_id"], s["span_id"]) for s in app}
    children: dict[tuple[str, str], list[Span]] = {}
    roots: list[Span] = []
    for s in app:  # in start order, so every child list is too
        parent = (s["trace_id"], s["parent_span_id"])
        if s["parent_span_id"] and parent in here and parent != (s["trace_id"], s["span_id"]):
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    stack: list[tuple[Span, int]] = [(r, 0) for r in reversed(roots)]
    rest = iter(app)  # spans whose parents form a cycle (hostile input) are reached from no root
    while True:
        if not stack:
            unseen = next((s for s in rest if (s["trace_id"], s["span_id"]) not in seen), None)
            if unseen is None:
                break
            stack.append((unseen, 0))
        s, depth = stack.pop()
        key = (s["trace_id"], s["span_id"])
        if key in seen:  # each span is drawn once
            continue
        seen.add(key)
        out.append(
            {
                "id": s["span_id"],
                "trace": s["trace_id"],
                "name": s["name"],
                "s": ms(s["start_ns"]),
                "d": span_ms(s["start_ns"], s["end_ns"]),
                "status": s["status_code"],
                "benign": bool(s["benign"]),
                "depth": depth,
            }
        )
        stack.extend((c, depth + 1) for c in reversed(children.get(key, ())))
    return out


def _exception(span: Span | None) -> dict[str, Any] | None:
    """The attributes of a span's last ``exception`` event."""
    if span is None:
        return None
    found = [e for e in span["events"] if isinstance(e, dict) and e.get("name") == "exception"]
    attributes = found[-1].get("attributes") if found else None
    return attributes if isinstance(attributes, dict) else None


def _failure(run: sqlite3.Row, entities: list[Span], attempts: list[Span], app: list[Span]) -> dict[str, Any]:
    """Why a failed run failed, or where a cancelled one was, for the top of its page: the error
    (type, code, message, stack) and the step and attempt that failed (or were in flight)."""
    runs = [s for s in entities if s["span_kind"] == SpanKinds.RUN]
    run_span = max(runs, key=lambda s: s["end_ns"]) if runs else None
    steps = [s for s in entities if s["span_kind"] == SpanKinds.STEP]
    failed = [s for s in steps if s["status_code"] == _ERROR]
    if run["status"] == "cancelled":
        failed = [s for s in steps if s["closed_by_end"]] or failed
    step = max(failed, key=lambda s: (s["end_ns"], s["start_ns"])) if failed else None
    attempt = None
    if step is not None:
        tried = [a for a in attempts if a["trace_id"] == step["trace_id"] and a["parent_span_id"] == step["span_id"]]
        attempt = max(tried, key=lambda a: a["attempt"] or 0) if tried else None
    holder = next((s for s in (run_span, step, attempt) if _exception(s) is not None), None)
    if holder is None and run["status"] == "failed":  # no event-log spans say it: the app's latest error does
        errors = [s for s in app if s["status_code"] == _ERROR]
        holder = max(errors, key=lambda s: (_exception(s) is not None, s["end_ns"])) if errors else None
    exception = _exception(holder) or {}
    message = exception.get("exception.message")
    for said in (run_span, holder):
        if not message and said is not None and said["status_message"]:
            message = said["status_message"]
    failing_step = None
    if step is not None:
        number = step["attempt"] if step["attempt"] is not None else (attempt["attempt"] if attempt else None)
        failing_step = {
            "name": short_name(step["step_name"]) if step["step_name"] else step["name"],
            "stepName": step["step_name"],
            "stepId": step["step_id"],
            "attempt": number,
            "spanId": step["span_id"],
            "traceId": step["trace_id"],
        }
    return {
        "status": run["status"],
        "type": exception.get("exception.type"),
        "code": run_span["error_type"] if run_span is not None else None,
        "message": message,
        "stack": exception.get("exception.stacktrace"),
        "step": failing_step,
        "spanId": holder["span_id"] if holder is not None else None,
        "traceId": holder["trace_id"] if holder is not None else None,
    }
