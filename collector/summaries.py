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
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol

import orjson

from telemetry.runtrace import SCOPE
from telemetry.semconv import STEP_ID, WORKFLOW_NAME, WORKFLOW_SPAN_KIND, SpanKinds
from telemetry.world import TERMINAL_RUN_EVENT_TYPES, TERMINAL_STATUSES

__all__ = [
    "EVENT_LOG_SCOPE",
    "RUN_STATUS",
    "STEP_STATUS",
    "TURN_ID",
    "Basis",
    "EventLike",
    "RunFacts",
    "RunSummary",
    "SpanFacts",
    "StepFacts",
    "Wait",
    "WaitKinds",
    "WorldView",
    "duration_ms",
    "entity_kind",
    "fold_waits",
    "shown_waits",
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
#: a hook is waited on until its disposal (after a payload, as ``WaitKinds.PAYLOAD``), a sleep until
#: it completes, a step until it completes or fails: these end a wait for good
_CLOSES: Final = frozenset({"hook_disposed", "wait_completed", "step_completed", "step_failed"})
_HOOK_RECEIVED: Final = "hook_received"
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
    #: a hook that received a payload and is still open: the workflow may await another one (``for
    #: await`` over the hook) or have moved on; shown only when nothing else is open (``shown_waits``)
    PAYLOAD: Final = "payload"
    #: nothing else is open and the run has not ended: it waits for its workflow's next turn (the
    #: queue to replay it), since its newest event. Brief between steps; long, a lost turn.
    TURN: Final = "turn"
    ALL: Final = (HOOK, SLEEP, QUEUED, STEP, RETRY, PAYLOAD, TURN)


#: the id of the one ``WaitKinds.TURN`` wait of a run
TURN_ID: Final = "turn"


def shown_waits(waits: Iterable[Wait]) -> tuple[Wait, ...]:
    """What a run is shown waiting on: a hook's wait after a payload (``PAYLOAD``) only when nothing
    else is open, since with the SDK 4.x a hook stays open until the run ends, however it was used."""
    waits = tuple(waits)
    if all(w.kind == WaitKinds.PAYLOAD for w in waits):
        return waits
    return tuple(w for w in waits if w.kind != WaitKinds.PAYLOAD)


#: each kind's own constant (the value a span carries is an equal string of its own; one object per
#: kind makes the kinds of a batch's spans one object each when pickled)
_KINDS: Final = {kind: kind for kind in SpanKinds.ALL}


def entity_kind(value: object) -> str | None:
    """The event-log entity a span stands for, given its ``workflow.span.kind`` value: one of
    ``SpanKinds``, or None for anything else (the app's own spans carry no such attribute)."""
    return _KINDS.get(value) if isinstance(value, str) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def duration_ms(start_ns: int | None, end_ns: int | None) -> float | None:
    """Milliseconds from start to end; None while either is unknown (a live run has no end)."""
    return (end_ns - start_ns) / 1e6 if start_ns is not None and end_ns is not None else None


class SpanFacts(NamedTuple):
    """What a run summary needs of one stored span (the store selects exactly these). A named
    tuple, not a dataclass: ingest makes one per span, and a tuple is made several times faster."""

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
    """Something a live run waits on, since when: a hook's first payload (or, open after one, another),
    the end of a sleep, a queued step's start, a running step's end, a failed step's next attempt, or
    with nothing else open its workflow's next turn (``WaitKinds``)."""

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
    root = max(runs, key=_last) if runs else None

    status = (root.run_status if root else None) or world.status
    if status is None:
        stated = max((s for s in unique if s.run_status), key=_last, default=None)
        status = stated.run_status if stated else None
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

    # the name the earliest span carrying one gives (all spans of a run normally say the same)
    named = min((s for s in basis if s.workflow_name), key=_first, default=None)
    workflow_name = named.workflow_name if named else world.workflow_name
    if workflow_name is None:
        named = min((s for s in unique if s.workflow_name), key=_first, default=None)
        workflow_name = named.workflow_name if named else None
    starts = [s.start_ns for s in basis]
    if world.created_ns is not None:
        starts.append(world.created_ns)
    finished = status in TERMINAL_STATUSES
    if root is not None:
        end_ns: int | None = root.end_ns
    else:
        end_ns = max((s.end_ns for s in basis), default=None) if finished else None
    first = min(basis, key=_first, default=None)
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


def _first(s: SpanFacts) -> tuple[int, str, str]:
    """Order of "earliest": by start, ties broken by ids (so any order of arrival agrees)."""
    return (s.start_ns, s.span_id, s.trace_id)


def _last(s: SpanFacts) -> tuple[int, str, str]:
    """Order of "latest": by end, ties broken by ids."""
    return (s.end_ns, s.span_id, s.trace_id)


@dataclass(slots=True)
class StepFacts:
    """What a run's summary keeps of one step id (the store keeps one row per run and step id, so
    folding a batch reads only the steps it names). Key ``""`` stands for event-log step and attempt
    spans without a step id (they can still fail)."""

    seen: bool = False  # an event-log step or attempt span names it (the entities' step count)
    seen_any: bool = False  # any span names it (the app spans' step count, before the log arrives)
    failed_attempts: int = 0  # failed attempt spans
    failed_steps: int = 0  # failed step spans

    @property
    def errors(self) -> int:
        """A failure counts once at its finest grain: the failed attempts, else the failed step."""
        return self.failed_attempts or self.failed_steps

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its values (a decoder process sends a request's step totals; the default
        reduction of a slots dataclass costs several times more to load)."""
        return StepFacts, (self.seen, self.seen_any, self.failed_attempts, self.failed_steps)


#: (start or end ns, span id, trace id, value): the earliest or latest span so far and what it said
Mark = tuple[int, str, str, str | None]


@dataclass(slots=True)
class Basis:
    """Running totals over one set of a run's spans (its event-log entities, or all of them)."""

    count: int = 0
    first: Mark | None = None  # the earliest span (value: None)
    named: Mark | None = None  # the earliest span naming the workflow (value: the name)
    last_end: int | None = None
    steps: int = 0  # distinct step ids
    errors: int = 0  # entities: failures at their finest grain; all spans: spans with status ERROR

    def add(self, s: SpanFacts) -> None:
        self.count += 1
        first: Mark = (s.start_ns, s.span_id, s.trace_id, None)
        if self.first is None or first < self.first:
            self.first = first
        if s.workflow_name:
            named: Mark = (s.start_ns, s.span_id, s.trace_id, s.workflow_name)
            if self.named is None or named < self.named:
                self.named = named
        if self.last_end is None or s.end_ns > self.last_end:
            self.last_end = s.end_ns

    def __reduce__(self) -> tuple[Any, ...]:
        return Basis, (self.count, self.first, self.named, self.last_end, self.steps, self.errors)

    def merge(self, other: Basis) -> None:
        """Add the spans ``other`` counted (all but ``steps`` and ``errors``, which depend on what
        was seen before: ``RunFacts.merge`` does those)."""
        self.count += other.count
        if other.first is not None and (self.first is None or other.first < self.first):
            self.first = other.first
        if other.named is not None and (self.named is None or other.named < self.named):
            self.named = other.named
        if other.last_end is not None and (self.last_end is None or other.last_end > self.last_end):
            self.last_end = other.last_end


@dataclass(slots=True)
class RunFacts:
    """A run's summary as running totals: ``fold`` adds spans to it, ``summary`` reads the row off
    it, so a commit costs what it brings, never a re-read of the run. Equal to ``summarize_run``
    over the same spans (the tests hold the two to that), given each span is folded once: the store
    folds only spans it had not stored, and a span sent again with different facts (rare: the same
    ids, another status or time) makes it rebuild the run's totals from its stored spans instead."""

    entities: Basis = field(default_factory=Basis)
    every: Basis = field(default_factory=Basis)
    root: Mark | None = None  # the latest run span (value: its workflow.run.status)
    failed_runs: int = 0  # run spans with status ERROR
    stated: Mark | None = None  # the latest span stating a workflow.run.status (value: it)
    benign: int = 0

    def fold(self, spans: Iterable[SpanFacts], steps: MutableMapping[str, StepFacts]) -> None:
        """Add ``spans`` (none folded before); ``steps`` holds the step rows they name (missing ones
        are added) and is updated in place."""
        for s in spans:
            self.every.add(s)
            if s.status_code == _ERROR:
                self.every.errors += 1
            if s.benign:
                self.benign += 1
            if s.step_id:
                step = steps.get(s.step_id) or steps.setdefault(s.step_id, StepFacts())
                if not step.seen_any:
                    step.seen_any = True
                    self.every.steps += 1
            if s.run_status:
                stated: Mark = (s.end_ns, s.span_id, s.trace_id, s.run_status)
                if self.stated is None or stated > self.stated:
                    self.stated = stated
            if s.kind is None:
                continue
            self.entities.add(s)
            if s.kind == SpanKinds.RUN:
                root: Mark = (s.end_ns, s.span_id, s.trace_id, s.run_status)
                if self.root is None or root > self.root:
                    self.root = root
                if s.status_code == _ERROR:
                    self.failed_runs += 1
            elif s.kind in (SpanKinds.STEP, SpanKinds.ATTEMPT):
                key = s.step_id or ""
                step = steps.get(key) or steps.setdefault(key, StepFacts())
                before = step.errors
                if s.step_id and not step.seen:
                    step.seen = True
                    self.entities.steps += 1
                if s.status_code == _ERROR:
                    if s.kind == SpanKinds.ATTEMPT:
                        step.failed_attempts += 1
                    else:
                        step.failed_steps += 1
                self.entities.errors += step.errors - before

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its values, as ``StepFacts``."""
        return RunFacts, (self.entities, self.every, self.root, self.failed_runs, self.stated, self.benign)

    def merge(
        self, other: RunFacts, other_steps: Mapping[str, StepFacts], steps: MutableMapping[str, StepFacts]
    ) -> None:
        """Add spans folded elsewhere: ``other`` and ``other_steps`` are what folding them into fresh
        totals made (``fold`` from nothing, as a decoder process does per run of a request);
        ``steps`` holds this run's rows of the step ids ``other_steps`` names (missing ones are added)
        and is updated in place. The same as folding those spans here (every total is a count, a
        least or a greatest, and the step counts follow from the step rows before and after), so a
        commit folds a run's new spans in a few operations, not a few per span. ``other`` and
        ``other_steps`` are left as they were."""
        self.entities.merge(other.entities)
        self.every.merge(other.every)
        self.every.errors += other.every.errors
        self.benign += other.benign
        self.failed_runs += other.failed_runs
        if other.stated is not None and (self.stated is None or other.stated > self.stated):
            self.stated = other.stated
        if other.root is not None and (self.root is None or other.root > self.root):
            self.root = other.root
        for key, new in other_steps.items():
            step = steps.get(key) or steps.setdefault(key, StepFacts())
            before = step.errors
            if new.seen_any and not step.seen_any:
                step.seen_any = True
                self.every.steps += 1
            if new.seen and not step.seen:
                step.seen = True
                self.entities.steps += 1
            step.failed_attempts += new.failed_attempts
            step.failed_steps += new.failed_steps
            self.entities.errors += step.errors - before

    def summary(self, run_id: str, world: WorldView | None = None, waiting: Sequence[Wait] = ()) -> RunSummary:
        """The run's row, as ``summarize_run`` would give it over every span folded."""
        world = world or WorldView()
        basis = self.entities if self.entities.count else self.every
        status = (self.root[3] if self.root else None) or world.status
        if status is None:
            status = self.stated[3] if self.stated else None
        status = status or "running"
        if self.entities.count:
            errors = self.entities.errors or (1 if self.failed_runs else 0)
        else:
            errors = self.every.errors
        workflow_name = basis.named[3] if basis.named else world.workflow_name
        if workflow_name is None and self.every.named:
            workflow_name = self.every.named[3]
        starts = [basis.first[0]] if basis.first else []
        if world.created_ns is not None:
            starts.append(world.created_ns)
        finished = status in TERMINAL_STATUSES
        end_ns = self.root[0] if self.root else (basis.last_end if finished else None)
        first = self.root or basis.first
        return RunSummary(
            run_id=run_id,
            workflow_name=workflow_name,
            status=status,
            start_ns=min(starts) if starts else None,
            end_ns=end_ns,
            steps=basis.steps,
            errors=errors,
            benign=self.benign,
            trace_id=first[2] if first else None,
            waiting=() if finished else tuple(waiting),
        )

    def to_json(self) -> str:
        record = [_basis_record(self.entities), _basis_record(self.every), self.root, self.failed_runs, self.stated]
        text: str = orjson.dumps([*record, self.benign]).decode()  # every commit writes a row per run it touched
        return text

    @classmethod
    def from_json(cls, text: str | None) -> RunFacts:
        """The totals ``to_json`` wrote; fresh ones for None (a run no span of which was folded)."""
        if not text:
            return cls()
        entities, every, root, failed_runs, stated, benign = orjson.loads(text)
        return cls(_basis(entities), _basis(every), _mark(root), failed_runs, _mark(stated), benign)


def _basis_record(b: Basis) -> list[Any]:
    return [b.count, b.first, b.named, b.last_end, b.steps, b.errors]


def _mark(value: Any) -> Mark | None:
    return (int(value[0]), str(value[1]), str(value[2]), value[3]) if value else None


def _basis(record: Sequence[Any]) -> Basis:
    count, first, named, last_end, steps, errors = record
    return Basis(count, _mark(first), _mark(named), last_end, steps, errors)


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
    payload, a sleep's or a step's end, the run's end) is harmless to repeat. Whether the run waits on
    its next turn (nothing open, not ended) is decided again whenever an event past the cursor comes,
    since that event (``WaitKinds.TURN``).
    """
    open_waits = {w.id: w for w in waiting if w.kind != WaitKinds.TURN}
    turn = next((w for w in waiting if w.kind == WaitKinds.TURN), None)
    last = cursor
    newest: EventLike | None = None  # the newest event past the cursor: the log moved on
    ended = False
    for event in sorted(events, key=lambda e: e.event_id):
        fresh = cursor is None or event.event_id > cursor
        kind, key = event.event_type, event.correlation_id
        if kind in _CLOSES:
            if key:
                open_waits.pop(key, None)
        elif kind in TERMINAL_RUN_EVENT_TYPES:
            open_waits.clear()
            ended = True
        elif kind == _HOOK_RECEIVED:
            before = open_waits.get(key) if key else None
            if key and (fresh or (before is not None and before.kind == WaitKinds.HOOK)):
                token = before.token if before is not None else _text(_event_data(event).get("token"))
                open_waits[key] = Wait(WaitKinds.PAYLOAD, key, event.created_ns, token=token)
        elif fresh and key:
            opened = _opened(kind, key, event, open_waits.get(key))
            if opened is not None:
                open_waits[key] = opened
        if fresh:
            newest = event
        if last is None or event.event_id > last:
            last = event.event_id
    if newest is not None:  # what the run waits for next is decided again from the newest event
        turn = None
        if not ended and not open_waits:
            turn = Wait(WaitKinds.TURN, TURN_ID, newest.created_ns)
    return (*open_waits.values(), *((turn,) if turn is not None else ())), last


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
