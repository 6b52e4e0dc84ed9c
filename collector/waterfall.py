"""A run's waterfall in the compact form the run page draws: one row per run, step, sleep and
hook (attempts are segments of their step's row, hook receipts are marks), the SDK's own spans
on the same time axis, why a finished run failed, and what a live run waits on. Compact on
purpose: a 10,000-step run is a few MB, not tens.

Rows are event-log entities, told by ``workflow.span.kind`` (``summaries.entity_kind``); every
other span of the run (``_page_spans``: other runs' spans and polling left out) is an SDK span,
placed at its real time. A live run also gets *open* rows, drawn up to now, for what has
begun but has no span yet: the run itself, and each thing it waits on (``runs.waiting``) — a hook,
a sleep, a step queued or running, a step between a failed attempt and its retry.

An ended run's waterfall changes only when the store gets something new of it: ``ended_run_stamp``
says, in a few index lookups, whether it did (``api.WaterfallCache`` sends the kept answer while not).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any, Final, NamedTuple

import msgspec

from telemetry.runtrace import short_name
from telemetry.semconv import ERROR_TYPE, STEP_ATTEMPT, STEP_ID, STEP_NAME, WORKFLOW_SPAN_KIND, SpanKinds
from telemetry.span_blobs import blob_json
from telemetry.world import TERMINAL_STATUSES

from .queries import finite, own_spans, run_json, sentry_drops, wait_json
from .store import SPAN_COLUMNS, SpanReader, decode_waits, non_finite
from .summaries import EVENT_LOG_SCOPE, STEP_STATUS, Wait, WaitKinds, entity_kind, shown_waits

__all__ = ["Built", "PageAttributes", "PageSpan", "build_waterfall", "ended_run_stamp", "waterfall"]

#: on a failed attempt: how long after it the next one started (the backoff, as it happened)
RETRY_DELAY_MS = "step.retry.delay_ms"
#: on a span the run's end closed (a step in flight when the run was cancelled)
CLOSED_BY_RUN_END = "workflow.closed_by_run_end"
_ERROR = 2  # OTLP status code ERROR
_STOPPED = ("failed", "cancelled")


#: what the page reads of a span's attributes: field of ``PageAttributes`` → attribute name
_ATTRIBUTES = {
    "span_kind": WORKFLOW_SPAN_KIND,
    "attempt": STEP_ATTEMPT,
    "step_status": STEP_STATUS,
    "step_name": STEP_NAME,
    "step_id": STEP_ID,
    "retry_delay": RETRY_DELAY_MS,
    "error_type": ERROR_TYPE,
    "closed_by_end": CLOSED_BY_RUN_END,
}


class PageAttributes(msgspec.Struct, rename=_ATTRIBUTES, gc=False):
    """The attributes of a span the page reads (``_ATTRIBUTES``), None where it has none. Read from
    a blob's JSON, every other attribute (inputs, outputs, ids: most of a blob's bytes) is skipped
    without being made into Python objects."""

    span_kind: Any = None
    attempt: Any = None
    step_status: Any = None
    step_name: Any = None
    step_id: Any = None
    retry_delay: Any = None
    error_type: Any = None
    closed_by_end: Any = None


class PageSpan(msgspec.Struct, array_like=True, gc=False):
    """A stored span as the run page reads it: a span blob's list (``telemetry.span_blobs.BLOB_FIELDS``,
    in that order) decoded straight into this, its attributes as ``PageAttributes`` and its events
    and links left as their JSON text (``event_list`` decodes the events of the few spans that need
    them: hooks, a stopped run's failure). A 10,000-step run's blob is ~13 MB of JSON: decoded in
    full, then made into tuples and freed, it cost the page ~115 ms of CPU; this way ~50.

    Read from JSON, it holds no NaN or infinity (JSON has none). Its types are the ones the store
    writes (``otlp.SpanRecord``); a blob with a span of other types is read the store's way
    (``_StoredSpan``), as are CBOR blobs and blobs with dead slots."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: PageAttributes
    events: msgspec.Raw
    links: msgspec.Raw
    resource: int
    scope: str
    source: str
    benign: int

    def event_list(self) -> list[Any]:
        events = msgspec.json.decode(self.events)
        return events if isinstance(events, list) else []


class _StoredSpan(PageSpan):
    """A span read by the store's own decoder (a CBOR blob, a blob with dead slots, a span of another
    blob stitched in by trace), its events already decoded."""

    decoded_events: list[Any] = []
    non_finite: bool = False  # whether the span holds a NaN or an infinity the page may show

    def event_list(self) -> list[Any]:
        return self.decoded_events


_DECODER = msgspec.json.Decoder(tuple[msgspec.Raw, list[PageSpan]])  # [resources, spans]: resources unread
_NO_JSON = msgspec.Raw(b"[]")
_RUN, _SCOPE, _SOURCE, _BENIGN, _ATTRS, _EVENTS = (
    SPAN_COLUMNS.index(c) for c in ("run_id", "scope", "source", "benign", "attributes", "events")
)
_START_ORDER = attrgetter("start_ns", "span_id")


def _from_stored(t: tuple[Any, ...]) -> _StoredSpan:
    """A span as ``store.SpanReader`` decodes it (a tuple in ``SPAN_COLUMNS`` order), as a page span."""
    trace_id, span_id, parent, name, kind, start, end, code, message = t[:9]
    attributes = t[_ATTRS] if isinstance(t[_ATTRS], dict) else {}
    events = t[_EVENTS] or []
    read = PageAttributes(**{field: attributes.get(name) for field, name in _ATTRIBUTES.items()})
    return _StoredSpan(
        trace_id,
        span_id,
        parent,
        name,
        kind,
        start,
        end,
        code,
        message,
        read,
        _NO_JSON,
        _NO_JSON,
        0,
        t[_SCOPE],
        t[_SOURCE],
        t[_BENIGN],
        decoded_events=events,
        non_finite=non_finite([start, end, msgspec.structs.astuple(read), events]),
    )


def _blob_spans(data: bytes) -> list[PageSpan] | None:
    """A span blob's spans as page spans; None for a blob to be read the store's way (CBOR, or
    spans of other types than the store's)."""
    raw = blob_json(data)
    if raw is None:
        return None
    try:
        return _DECODER.decode(raw)[1]
    except msgspec.ValidationError:
        return None


def _run_spans(reader: SpanReader, run_id: str) -> list[PageSpan] | None:
    """The spans carrying ``run_id``, read from the run's blobs; None when one of them is to be read
    the store's way (``_blob_spans``) or has dead slots (a span re-sent or dropped since: which copy
    is live is ``SpanReader.run``'s to say)."""
    spans: list[PageSpan] = []
    for dead, data in reader.run_blobs(run_id):
        read = None if dead else _blob_spans(data)
        if read is None:
            return None
        spans += read
    return spans


def _page_spans(conn: sqlite3.Connection, run_id: str) -> tuple[list[PageSpan], frozenset[str], bool]:
    """``queries.own_decoded_spans`` as page spans, in start order: the run's own spans (its blobs'
    spans, and the rest of its event-log traces, less other runs' spans and polling: ``own_spans``),
    read in one snapshot (a commit in between cannot show half a write); with the run's event-log
    traces (what stitched the rest in) and whether a span holds a NaN or an infinity the page may show."""
    begun = not conn.in_transaction
    if begun:
        conn.execute("BEGIN")
    try:
        reader = SpanReader(conn)
        spans = _run_spans(reader, run_id)
        non_finite = False
        if spans is None:
            stored = [_from_stored(t) for t in reader.run(run_id)]
            non_finite = any(s.non_finite for s in stored)
            spans = list(stored)
        traces = frozenset({s.trace_id for s in spans if s.scope == EVENT_LOG_SCOPE})
        stitched = [t for trace_id in sorted(traces) for t in reader.trace(trace_id, other_than_run=run_id)]
    finally:
        if begun and conn.in_transaction:
            conn.execute("COMMIT")
    if not stitched and all(s.trace_id in traces for s in spans):  # nothing own_spans would leave out
        spans.sort(key=_START_ORDER)
        return spans, traces, non_finite
    runs: dict[int, str | None] = {id(s): run_id for s in spans}
    for t in stitched:
        span = _from_stored(t)
        runs[id(span)] = t[_RUN]
        non_finite = non_finite or span.non_finite
        spans.append(span)
    spans.sort(key=_START_ORDER)
    origins = [
        {
            "o_trace": s.trace_id,
            "o_span": s.span_id,
            "o_parent": s.parent_span_id,
            "o_name": s.name,
            "o_run": runs[id(s)],
            "o_scope": s.scope,
        }
        for s in spans
    ]
    kept = {id(origin) for origin in own_spans(origins, run_id)}
    return [s for s, origin in zip(spans, origins, strict=True) if id(origin) in kept], traces, non_finite


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
    """``waterfall``, with the traces it was stitched from. Holds no NaN or infinity, so that
    ``api.finite_dumps`` writes it as strict JSON: page spans read from JSON have none, the run's row
    goes through ``queries.finite``, and so does the whole view when a span read the store's way
    holds one (a CBOR blob's; edge validation keeps them out of new spans)."""
    run = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if run is None:
        return None
    spans, traces, non_finite = _page_spans(conn, run_id)  # only what the page reads: 20k spans on a first view
    live = run["status"] not in TERMINAL_STATUSES
    waits = shown_waits(decode_waits(run["waiting"])) if live else ()
    now = time.time_ns() if now_ns is None else now_ns
    starts = [w.since_ns for w in waits]
    if spans:
        starts.append(spans[0].start_ns)  # spans come in start order
    if run["start_ns"] is not None:
        starts.append(run["start_ns"])
    t0 = min(starts, default=0)

    def ms(ns: int) -> float:
        return _ms(ns - t0)

    rows: list[dict[str, Any]] = []
    by_id: dict[tuple[str, str], dict[str, Any]] = {}
    by_step: dict[str, dict[str, Any]] = {}  # open step rows by step id
    attempts: list[PageSpan] = []
    entities: list[PageSpan] = []
    app: list[PageSpan] = []
    for span in spans:
        attributes = span.attributes
        kind = entity_kind(attributes.span_kind)
        if kind == SpanKinds.ATTEMPT:
            attempts.append(span)
            continue
        if kind is None:
            app.append(span)
            continue
        entities.append(span)
        start, span_id, trace_id = span.start_ns, span.span_id, span.trace_id
        row: dict[str, Any] = {
            "id": span_id,
            "trace": trace_id,
            "kind": kind,
            "name": span.name,
            "s": _ms(start - t0),
            "d": _ms(span.end_ns - start),
            "status": span.status_code,
            "benign": bool(span.benign),
            "segments": [],
        }
        if kind == SpanKinds.STEP:
            row["attempts"] = attributes.attempt
            row["stepStatus"] = attributes.step_status
        elif kind == SpanKinds.HOOK:
            row["marks"] = [
                {"t": ms(e["time_ns"]), "name": e["name"]}
                for e in span.event_list()
                if isinstance(e, dict) and e.get("name") == "hook_received"
            ]
        rows.append(row)
        by_id[(trace_id, span_id)] = row
    for span in attempts:
        attributes = span.attributes
        key = (span.trace_id, span.parent_span_id)
        parent = by_id.get(key)
        start, end = span.start_ns, span.end_ns
        if parent is None:  # the step is still open (being retried): its row stands in until its span comes
            parent = by_id[key] = _open_step(attributes.step_name, ms(start), "pending")
            parent["id"], parent["trace"] = span.span_id, span.trace_id
            rows.append(parent)
            step_id = attributes.step_id
            if isinstance(step_id, str):
                by_step[step_id] = parent
        number = attributes.attempt
        if parent.get("open"):  # an open row spans its attempts, and while live up to now
            parent["id"] = span.span_id  # its label shows the latest attempt
            parent["attempts"] = max(parent["attempts"] or 0, number or 0)
            parent["d"] = round(max(parent["d"], ms(max(end, now) if live else end) - parent["s"]), 3)
        delay = attributes.retry_delay
        parent["segments"].append(
            {
                "id": span.span_id,
                "s": _ms(start - t0),
                "d": _ms(end - start),
                "status": span.status_code,
                "n": number,
                "retryMs": delay if isinstance(delay, int | float) and not isinstance(delay, bool) else None,
            }
        )
    if live:
        _open_rows(rows, by_step, waits, run, ms, ms(now))
    rows.sort(key=lambda r: (r["kind"] != SpanKinds.RUN, r["s"]))  # stable: spans keep their order
    events = conn.execute("SELECT count(*) FROM run_events WHERE run_id = ?", (run_id,)).fetchone()[0]
    view: dict[str, Any] = {
        "run": finite(run_json(run, trace_url_template=trace_url_template)),
        "t0": t0,
        "nowNs": now,
        "now": ms(now) if live else None,
        "rows": rows,
        "sdk": _sdk_rows(app, ms),
        "failure": _failure(run, entities, attempts, app) if run["status"] in _STOPPED else None,
        "eventsCount": events,
        "sentryDropped": sentry_drops(conn, run_id),
    }
    return Built(finite(view) if non_finite else view, traces)


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
        if w.kind in _WAIT_ROWS:
            rows.append(
                {
                    "id": None,
                    "trace": None,
                    "kind": w.kind,
                    "name": _wait_row_name(w),
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


#: waits drawn as a row of their own (the others mark their step's row)
_WAIT_ROWS: Final = frozenset({WaitKinds.HOOK, WaitKinds.SLEEP, WaitKinds.PAYLOAD, WaitKinds.TURN})


def _wait_row_name(w: Wait) -> str:
    if w.kind == WaitKinds.TURN:
        return "next turn"
    if w.kind in (WaitKinds.HOOK, WaitKinds.PAYLOAD) and w.token:
        return f"hook {w.token}" + (" (after a payload)" if w.kind == WaitKinds.PAYLOAD else "")
    return w.kind


def _sdk_rows(app: list[PageSpan], ms: Callable[[int], float]) -> list[dict[str, Any]]:
    """The SDK's spans at their real times, as a tree: each after its parent (children by start),
    indented by depth. A span whose parent is not here (an event-log span, a span of the app's
    caller) starts a tree of its own."""
    here = {(s.trace_id, s.span_id) for s in app}
    children: dict[tuple[str, str], list[PageSpan]] = {}
    roots: list[PageSpan] = []
    for s in app:  # in start order, so every child list is too
        parent = (s.trace_id, s.parent_span_id)
        if s.parent_span_id and parent in here and parent != (s.trace_id, s.span_id):
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    stack: list[tuple[PageSpan, int]] = [(r, 0) for r in reversed(roots)]
    rest = iter(app)  # spans whose parents form a cycle (hostile input) are reached from no root
    while True:
        if not stack:
            unseen = next((s for s in rest if (s.trace_id, s.span_id) not in seen), None)
            if unseen is None:
                break
            stack.append((unseen, 0))
        s, depth = stack.pop()
        key = (s.trace_id, s.span_id)
        if key in seen:  # each span is drawn once
            continue
        seen.add(key)
        out.append(
            {
                "id": s.span_id,
                "trace": s.trace_id,
                "name": s.name,
                "s": ms(s.start_ns),
                "d": _ms(s.end_ns - s.start_ns),
                "status": s.status_code,
                "benign": bool(s.benign),
                "depth": depth,
            }
        )
        stack.extend((c, depth + 1) for c in reversed(children.get(key, ())))
    return out


def _exception(span: PageSpan | None) -> dict[str, Any] | None:
    """The attributes of a span's last ``exception`` event."""
    if span is None:
        return None
    found = [e for e in span.event_list() if isinstance(e, dict) and e.get("name") == "exception"]
    attributes = found[-1].get("attributes") if found else None
    return attributes if isinstance(attributes, dict) else None


def _failure(
    run: sqlite3.Row, entities: list[PageSpan], attempts: list[PageSpan], app: list[PageSpan]
) -> dict[str, Any]:
    """Why a failed run failed, or where a cancelled one was, for the top of its page: the error
    (type, code, message, stack) and the step and attempt that failed (or were in flight)."""
    runs = [s for s in entities if s.attributes.span_kind == SpanKinds.RUN]
    run_span = max(runs, key=lambda s: s.end_ns) if runs else None
    steps = [s for s in entities if s.attributes.span_kind == SpanKinds.STEP]
    failed = [s for s in steps if s.status_code == _ERROR]
    if run["status"] == "cancelled":
        failed = [s for s in steps if s.attributes.closed_by_end] or failed
    step = max(failed, key=lambda s: (s.end_ns, s.start_ns)) if failed else None
    attempt = None
    if step is not None:
        tried = [a for a in attempts if a.trace_id == step.trace_id and a.parent_span_id == step.span_id]
        attempt = max(tried, key=lambda a: a.attributes.attempt or 0) if tried else None
    holder = next((s for s in (run_span, step, attempt) if _exception(s) is not None), None)
    if holder is None and run["status"] == "failed":  # no event-log spans say it: the app's latest error does
        errors = [s for s in app if s.status_code == _ERROR]
        holder = max(errors, key=lambda s: (_exception(s) is not None, s.end_ns)) if errors else None
    exception = _exception(holder) or {}
    message = exception.get("exception.message")
    for said in (run_span, holder):
        if not message and said is not None and said.status_message:
            message = said.status_message
    failing_step = None
    if step is not None:
        step_name = step.attributes.step_name
        number = step.attributes.attempt
        if number is None and attempt is not None:
            number = attempt.attributes.attempt
        failing_step = {
            "name": short_name(step_name) if step_name else step.name,
            "stepName": step_name,
            "stepId": step.attributes.step_id,
            "attempt": number,
            "spanId": step.span_id,
            "traceId": step.trace_id,
        }
    return {
        "status": run["status"],
        "type": exception.get("exception.type"),
        "code": run_span.attributes.error_type if run_span is not None else None,
        "message": message,
        "stack": exception.get("exception.stacktrace"),
        "step": failing_step,
        "spanId": holder.span_id if holder is not None else None,
        "traceId": holder.trace_id if holder is not None else None,
    }
