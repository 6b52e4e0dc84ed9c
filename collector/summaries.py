"""Run summaries: the rules that turn a run's stored spans and events into its row in the runs list.

Status, error and step counts, start, end and duration, benign conflicts, and what a live run waits
on are decided here and nowhere else, as pure functions over plain values (no SQL, no I/O): the
store selects the rows, calls these, and writes the result back, and the tests call them directly.

Event-log entities are recognised by their ``workflow.span.kind`` attribute, never by span name or
by how the span arrived: spans the collector built from the world it follows and the same spans
sent by ``wft export`` / ``wft follow`` over OTLP count alike. Spans without the attribute (the
app's own SDK spans) are not entities; they only decide a run's row when no event-log span of that
run has arrived yet.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from telemetry.runtrace import SCOPE
from telemetry.semconv import STEP_ID, WORKFLOW_NAME, WORKFLOW_SPAN_KIND, SpanKinds
from telemetry.world import TERMINAL_RUN_EVENT_TYPES, TERMINAL_STATUSES

__all__ = [
    "EVENT_LOG_SCOPE",
    "RUN_STATUS",
    "STEP_STATUS",
    "EventLike",
    "RunSummary",
    "SpanFacts",
    "Wait",
    "WaitKinds",
    "WorldView",
    "duration_ms",
    "entity_kind",
    "fold_waits",
    "summarize_run",
]

#: the instrumentation scope of every span built from an event log (however it reached us)
EVENT_LOG_SCOPE: Final = SCOPE.name
#: attributes the runtrace and the SDK set that ``telemetry.semconv`` has no constant for yet
RUN_STATUS: Final = "workflow.run.status"
STEP_STATUS: Final = "step.status"
_ERROR: Final = 2  # OTLP status code ERROR
_HOOK_OPENS: Final = "hook_created"
_WAIT_OPENS: Final = "wait_created"
#: a hook is waited on until its first payload (where its span ends too) or its disposal, a sleep
#: until it completes, a step until it completes or fails: these end a wait for good
_CLOSES: Final = frozenset({"hook_received", "hook_disposed", "wait_completed", "step_completed", "step_failed"})
_STEP_CREATED: Final = "step_created"
_STEP_STARTED: Final = "step_started"
_STEP_RETRYING: Final = "step_retrying"


class WaitKinds:
    """What a live run can be waiting on (``Wait.kind``)."""

    HOOK: Final = SpanKinds.HOOK  # a hook's first payload (token)
    SLEEP: Final = SpanKinds.SLEEP  # the end of a sleep (resume_at)
    QUEUED: Final = "queued"  # a step created and not started yet: the queue
    STEP: Final = SpanKinds.STEP  # a step attempt running
    RETRY: Final = "retry"  # a step whose attempt failed, before its next attempt (resume_at when the world says)
    ALL: Final = (HOOK, SLEEP, QUEUED, STEP, RETRY)


def entity_kind(value: object) -> str | None:
    """The event-log entity a span stands for, given its ``workflow.span.kind`` value: one of
    ``SpanKinds``, or None for anything else (the app's own spans carry no such attribute)."""
    return value if isinstance(value, str) and value in SpanKinds.ALL else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def duration_ms(start_ns: int | None, end_ns: int | None) -> float | None:
    """Milliseconds from start to end; None while either is unknown (a live run has no end)."""
    return (end_ns - start_ns) / 1e6 if start_ns is not None and end_ns is not None else None


@dataclass(frozen=True, slots=True)
class SpanFacts:
    """What a run summary needs of one stored span (the store selects exactly these)."""

    trace_id: str
    span_id: str
    start_ns: int
    end_ns: int
    status_code: int
    benign: bool
    kind: str | None  # workflow.span.kind; None for the app's own spans
    step_id: str | None
    workflow_name: str | None
    run_status: str | None

    @classmethod
    def create(
        cls,
        trace_id: str,
        span_id: str,
        start_ns: int,
        end_ns: int,
        status_code: int,
        benign: object,
        kind: object,
        step_id: object,
        workflow_name: object,
        run_status: object,
    ) -> SpanFacts:
        """From stored values, whatever their JSON types: unknown kinds and non-text values become None."""
        return cls(
            trace_id,
            span_id,
            start_ns,
            end_ns,
            status_code,
            bool(benign),
            entity_kind(kind),
            _text(step_id),
            _text(workflow_name),
            _text(run_status),
        )

    @classmethod
    def from_attributes(
        cls,
        trace_id: str,
        span_id: str,
        start_ns: int,
        end_ns: int,
        status_code: int,
        benign: bool,
        attributes: Mapping[str, Any],
    ) -> SpanFacts:
        return cls.create(
            trace_id,
            span_id,
            start_ns,
            end_ns,
            status_code,
            benign,
            attributes.get(WORKFLOW_SPAN_KIND),
            attributes.get(STEP_ID),
            attributes.get(WORKFLOW_NAME),
            attributes.get(RUN_STATUS),
        )


@dataclass(frozen=True, slots=True)
class WorldView:
    """What the followed world itself says of a run (known before any of its spans)."""

    status: str | None = None
    workflow_name: str | None = None
    created_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """Something a live run waits on, since when: a hook's first payload, the end of a sleep, a
    queued step's start, a running step's end, a failed step's next attempt (``WaitKinds``)."""

    kind: str  # one of WaitKinds
    id: str  # the hook, wait or step id (the events' correlation id)
    since_ns: int
    token: str | None = None
    resume_at: str | None = None  # ISO-8601, as the world wrote it (a sleep's end, a retry's time)
    name: str | None = None  # a step's name
    attempt: int | None = None  # a running step's attempt, or the number of the attempt a retry waits for

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": self.kind, "id": self.id, "since_ns": self.since_ns}
        for key, value in (
            ("token", self.token),
            ("resume_at", self.resume_at),
            ("name", self.name),
            ("attempt", self.attempt),
        ):
            if value is not None:
                record[key] = value
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Wait:
        attempt = record.get("attempt")
        return cls(
            str(record["kind"]),
            str(record["id"]),
            int(record["since_ns"]),
            _text(record.get("token")),
            _text(record.get("resume_at")),
            _text(record.get("name")),
            attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
        )


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run's row in the runs list."""

    run_id: str
    workflow_name: str | None
    status: str
    start_ns: int | None
    end_ns: int | None
    steps: int
    errors: int
    benign: int
    trace_id: str | None
    waiting: tuple[Wait, ...] = ()

    @property
    def duration_ms(self) -> float | None:
        return duration_ms(self.start_ns, self.end_ns)


def summarize_run(
    run_id: str, spans: Iterable[SpanFacts], world: WorldView | None = None, waiting: Sequence[Wait] = ()
) -> RunSummary:
    """A run's row from the spans carrying its id, what its world says, and what it waits on.

    When the run has event-log spans they decide: status from the run span (then the world),
    steps are distinct step ids, errors count each failure once at its finest grain (a failed
    attempt; a failed step none of whose attempts failed; a failed run with no failed step).
    Without them the app's spans stand in: their ``workflow.run.status``, ``step.id`` and error
    statuses. Benign conflicts are counted over every span. A finished run waits on nothing.
    """
    world = world or WorldView()
    unique = list({(s.trace_id, s.span_id): s for s in spans}.values())  # a re-sent span counts once
    entities = [s for s in unique if s.kind is not None]
    basis = entities or unique
    runs = [s for s in entities if s.kind == SpanKinds.RUN]
    root = max(runs, key=lambda s: (s.end_ns, s.span_id)) if runs else None

    status = (root.run_status if root else None) or world.status
    if status is None:
        stated = sorted((s for s in unique if s.run_status), key=lambda s: (s.end_ns, s.span_id))
        status = stated[-1].run_status if stated else None
    status = status or "running"

    if entities:
        steps = {s.step_id for s in entities if s.step_id and s.kind in (SpanKinds.STEP, SpanKinds.ATTEMPT)}
        failed_attempts = {s.step_id for s in entities if s.kind == SpanKinds.ATTEMPT and s.status_code == _ERROR}
        errors = sum(1 for s in entities if s.kind == SpanKinds.ATTEMPT and s.status_code == _ERROR)
        errors += sum(
            1
            for s in entities
            if s.kind == SpanKinds.STEP and s.status_code == _ERROR and s.step_id not in failed_attempts
        )
        if errors == 0 and any(s.status_code == _ERROR for s in runs):
            errors = 1
    else:
        steps = {s.step_id for s in unique if s.step_id}
        errors = sum(1 for s in unique if s.status_code == _ERROR)

    names = [s.workflow_name for s in basis if s.workflow_name]
    workflow_name = names[0] if names else world.workflow_name
    if workflow_name is None:
        workflow_name = next((s.workflow_name for s in unique if s.workflow_name), None)
    starts = [s.start_ns for s in basis]
    if world.created_ns is not None:
        starts.append(world.created_ns)
    finished = status in TERMINAL_STATUSES
    if root is not None:
        end_ns: int | None = root.end_ns
    else:
        end_ns = max((s.end_ns for s in basis), default=None) if finished else None
    first = min(basis, key=lambda s: (s.start_ns, s.span_id), default=None)
    return RunSummary(
        run_id=run_id,
        workflow_name=workflow_name,
        status=status,
        start_ns=min(starts) if starts else None,
        end_ns=end_ns,
        steps=len(steps),
        errors=errors,
        benign=sum(1 for s in unique if s.benign),
        trace_id=root.trace_id if root else (first.trace_id if first else None),
        waiting=() if finished else tuple(waiting),
    )


class EventLike(Protocol):
    """One stored event-log row (``collector.store.EventRow`` is one)."""

    @property
    def event_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def created_ns(self) -> int: ...
    @property
    def data(self) -> str | None: ...  # eventData as JSON text


def _event_data(event: EventLike) -> Mapping[str, Any]:
    try:
        data = json.loads(event.data) if event.data else None
    except ValueError:  # not ours to judge here: the event simply says nothing more
        return {}
    return data if isinstance(data, dict) else {}


def fold_waits(
    waiting: Sequence[Wait], cursor: str | None, events: Iterable[EventLike]
) -> tuple[tuple[Wait, ...], str | None]:
    """What a run waits on after ``events``, given what it waited on after the events up to
    ``cursor`` (the highest event id folded so far); returns the new waits and cursor.

    Incremental, so a commit costs what it brings, and safe to feed an event again (a follower
    resends a run's whole log): a wait opens or changes (a step's queued → running → retry →
    running) only from an event past the cursor, while what ends a wait for good (a hook's
    payload, a sleep's or a step's end, the run's end) is harmless to repeat.
    """
    open_waits = {w.id: w for w in waiting}
    last = cursor
    for event in sorted(events, key=lambda e: e.event_id):
        fresh = cursor is None or event.event_id > cursor
        kind, key = event.event_type, event.correlation_id
        if kind in _CLOSES:
            if key:
                open_waits.pop(key, None)
        elif kind in TERMINAL_RUN_EVENT_TYPES:
            open_waits.clear()
        elif fresh and key:
            opened = _opened(kind, key, event, open_waits.get(key))
            if opened is not None:
                open_waits[key] = opened
        if last is None or event.event_id > last:
            last = event.event_id
    return tuple(open_waits.values()), last


def _opened(kind: str, key: str, event: EventLike, before: Wait | None) -> Wait | None:
    """The wait an event opens, or turns ``before`` (the same id's wait) into; None: no change."""
    if kind == _HOOK_OPENS:
        if before is not None:
            return None
        return Wait(WaitKinds.HOOK, key, event.created_ns, token=_text(_event_data(event).get("token")))
    if kind == _WAIT_OPENS:
        if before is not None:
            return None
        return Wait(WaitKinds.SLEEP, key, event.created_ns, resume_at=_text(_event_data(event).get("resumeAt")))
    if kind not in (_STEP_CREATED, _STEP_STARTED, _STEP_RETRYING):
        return None
    name = _text(_event_data(event).get("stepName")) or (before.name if before else None)
    if kind == _STEP_CREATED:
        return None if before is not None else Wait(WaitKinds.QUEUED, key, event.created_ns, name=name)
    if kind == _STEP_STARTED:
        attempt = before.attempt if before is not None and before.kind == WaitKinds.RETRY else None
        return Wait(WaitKinds.STEP, key, event.created_ns, name=name, attempt=attempt or 1)
    running = before.attempt if before is not None and before.kind == WaitKinds.STEP else None
    retry_at = _text(_event_data(event).get("retryAfter"))
    return Wait(WaitKinds.RETRY, key, event.created_ns, resume_at=retry_at, name=name, attempt=(running or 1) + 1)
