"""A run's event log, rebuilt as a trace: run → steps → attempts, sleeps, hooks, errors.

The event log is the one authoritative record (hook and wait records are deleted once
resolved), so spans are derived from events alone. Ids are deterministic (``trace_identity``):
the same log always gives the same spans, so exporting twice is harmless.

Only finished work becomes a span. While a run is live, finished steps, attempts, sleeps and
hooks are emitted; the run span (and anything still open) follows when the run ends.
Untidy logs are input, not errors: duplicates, events after the run's end and ends without a
start each become a ``workflow.anomaly`` span event and are counted.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, NamedTuple

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from . import __version__
from .payloads import UNDEFINED, JSError, JSRegExp, JSValue, Opaque, to_jsonable
from .semconv import WORKFLOW_SPAN_KIND, SpanKinds
from .trace_identity import parse_traceparent, span_id_for, trace_id_for
from .world import TERMINAL_RUN_EVENT_TYPES, Event, StructuredError, WorkflowRun

__all__ = [
    "RunTrace",
    "RunTraceBuilder",
    "SpanData",
    "SpanEventData",
    "build_run_trace",
    "anomaly_counts",
    "readable_span",
    "trace_id_for",
    "short_name",
]

SCOPE = InstrumentationScope("workflow-telemetry.runtrace", __version__)
MAX_PAYLOAD_CHARS = 8192

#: a part's key prefix ("step:<id>", "wait:<id>", …) → its ``workflow.span.kind``
_KIND_OF_KEY = {
    "run": SpanKinds.RUN,
    "step": SpanKinds.STEP,
    "attempt": SpanKinds.ATTEMPT,
    "wait": SpanKinds.SLEEP,
    "hook": SpanKinds.HOOK,
}

_anomalies: Counter[str] = Counter()
_anomalies_lock = threading.Lock()


def anomaly_counts() -> dict[str, int]:
    """Anomalies seen in event logs by this process, per kind."""
    with _anomalies_lock:
        return dict(_anomalies)


def short_name(name: str) -> str:
    """``workflow//./workflows/demo//sequentialWorkflow`` → ``sequentialWorkflow``."""
    return name.rsplit("//", 1)[-1] if "//" in name else name


def _ns(moment: datetime) -> int:
    return round(moment.timestamp() * 1000) * 1_000_000


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _not_plain_json(value: Any) -> Any:
    raise TypeError("not plain JSON")


_PLAIN_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_not_plain_json)
_ANY_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


#: values ``to_jsonable`` returns unchanged, whose JSON is the same from either encoder
_SCALARS = frozenset({str, int, bool, float, type(None)})
#: values ``to_jsonable`` makes ``{}`` of (a stream handle among a step's arguments: ``JSValue``)
_EMPTY_OBJECTS = frozenset({JSValue, JSError, JSRegExp, Opaque})
_NOT_SHALLOW = object()


def _shallow(item: Any) -> Any:
    """``to_jsonable(item)`` for a scalar, an opaque JS value or a flat object of scalars;
    ``_NOT_SHALLOW`` for anything else (a Map's keys, a Date, deeper nesting)."""
    kind = item.__class__
    if kind in _SCALARS:
        return item
    if kind in _EMPTY_OBJECTS:
        return {}
    if kind is dict and all(k.__class__ is str and v.__class__ in _SCALARS for k, v in item.items()):
        return item
    return _NOT_SHALLOW


def _shallow_plain(value: dict[Any, Any]) -> dict[str, Any] | None:
    """``to_jsonable(value)`` for a step's usual arguments (``{args: [...], closureVars: undefined,
    thisVal: undefined}``) without walking them generically; ``None`` if they hold anything more."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is UNDEFINED:
            continue
        if key.__class__ is not str:
            return None
        if item.__class__ is list:
            members = [_shallow(member) for member in item]
            if _NOT_SHALLOW in members:
                return None
            out[key] = members
        else:
            item = _shallow(item)
            if item is _NOT_SHALLOW:
                return None
            out[key] = item
    return out


def _payload_attr(value: Any) -> str:
    if value.__class__ is dict and UNDEFINED in value.values():  # a step's arguments: ``closureVars: undefined``
        shallow = _shallow_plain(value)
        try:  # a NaN among them fails here: to_jsonable makes it null
            text = _PLAIN_JSON.encode(shallow) if shallow is not None else None
        except ValueError:
            text = None
        if text is None:
            text = _ANY_JSON.encode(to_jsonable(value))
        return text if len(text) <= MAX_PAYLOAD_CHARS else text[: MAX_PAYLOAD_CHARS - 1] + "…"
    try:  # most payloads are plain JSON already; JS-only values (undefined, Date, NaN…) take the slow path
        text = _PLAIN_JSON.encode(value)
    except (TypeError, ValueError):
        text = _ANY_JSON.encode(to_jsonable(value))
    return text if len(text) <= MAX_PAYLOAD_CHARS else text[: MAX_PAYLOAD_CHARS - 1] + "…"


class SpanEventData(NamedTuple):
    """A span event as the builder keeps it: plain data, cheap to make and to encode."""

    name: str
    timestamp: int
    attributes: dict[str, Any]


class SpanData(NamedTuple):
    """A finished span as plain data: what ``otlp_encode`` writes straight into OTLP messages.

    Building SDK ``ReadableSpan`` objects (``readable_span``) costs as much again as encoding
    them, so the export path never does; the follower and the tests still can.
    """

    trace_id: int
    span_id: int
    parent_span_id: int | None
    parent_is_remote: bool
    name: str
    start_time: int
    end_time: int
    attributes: dict[str, Any]
    events: list[SpanEventData]
    status: Status | None  # None: unset


_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def readable_span(span: SpanData, resource: Resource) -> ReadableSpan:
    """The SDK's view of a built span (what ``encode_spans`` and SDK exporters take)."""
    parent = (
        SpanContext(span.trace_id, span.parent_span_id, is_remote=span.parent_is_remote, trace_flags=_SAMPLED)
        if span.parent_span_id is not None
        else None
    )
    return ReadableSpan(
        name=span.name,
        context=SpanContext(span.trace_id, span.span_id, is_remote=False, trace_flags=_SAMPLED),
        parent=parent,
        resource=resource,
        attributes=span.attributes,
        events=[SpanEvent(e.name, e.attributes, timestamp=e.timestamp) for e in span.events],
        kind=SpanKind.INTERNAL,
        status=span.status or _UNSET,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=SCOPE,
    )


@dataclass(slots=True)
class _Part:
    """A span being assembled from events."""

    key: str
    name: str
    parent: str | None
    start: int
    end: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEventData] = field(default_factory=list)
    status: Status | None = None  # None: unset


@dataclass
class RunTrace:
    """A run's finished spans: ``data`` as built (what the OTLP encoder takes), ``spans`` as
    SDK ``ReadableSpan`` objects, made on first access only."""

    run_id: str
    trace_id: int
    data: list[SpanData]
    complete: bool
    anomalies: Counter[str]
    resource: Resource

    @cached_property
    def spans(self) -> list[ReadableSpan]:
        return [readable_span(span, self.resource) for span in self.data]


def _exception_event(
    error: StructuredError | None, fallback_type: str, at: int, extra: dict[str, Any] | None = None
) -> SpanEventData:
    error = error or StructuredError("")
    first_line = (error.stack or "").split("\n", 1)[0]
    kind = first_line.split(":", 1)[0].strip() if ":" in first_line else fallback_type
    if fallback_type != "Error":  # a class the error itself declared (spec ≥ 5) beats its stack's first line
        kind = fallback_type
    attributes: dict[str, Any] = {"exception.type": kind or fallback_type, "exception.message": error.message}
    if error.stack:
        attributes["exception.stacktrace"] = error.stack
    attributes.update(extra or {})
    return SpanEventData("exception", at, attributes)


def _error_type(data: dict[str, Any]) -> str:
    """The class a spec ≥ 5 error was serialized with (its reader maps it to ``name``), else "Error"."""
    raw = data.get("error")
    name = raw.get("name") if isinstance(raw, dict) else None
    return name if isinstance(name, str) and name else "Error"


def _event_error(data: dict[str, Any]) -> StructuredError:
    """Step events carry ``error`` as a string (4.x) or a map, with ``stack`` beside it."""
    raw = data.get("error")
    if isinstance(raw, dict):
        return StructuredError(str(raw.get("message", "")), raw.get("stack") or data.get("stack"), raw.get("code"))
    return StructuredError(str(raw or ""), data.get("stack"))


class _Builder:
    def __init__(self, run_id: str, run: WorkflowRun | None, include_payloads: bool) -> None:
        self.run_id = run_id
        self.run = run
        self.payloads = include_payloads
        self.parts: dict[str, _Part] = {}
        self.seen: set[str] = set()
        self.anomalies: Counter[str] = Counter()
        self.terminal: Event | None = None
        self.workflow_name = run.workflow_name if run else ""
        self.attempts: dict[str, int] = {}  # step id → attempts started
        self.open_attempt: dict[str, str] = {}
        self.run_part: _Part | None = None
        self.created_seen = False
        self.retrying: dict[str, _Part] = {}
        self.closed: list[str] = []  # part keys in the order they ended: what a follower sends next
        self.fed = 0
        self.at = 0  # the time of the event being fed (ns): asked for several times per event

    def end(self, part: _Part, at: int) -> None:
        part.end = at
        self.closed.append(part.key)

    # -- helpers -------------------------------------------------------------------------
    def anomaly(self, kind: str, event: Event, target: _Part | None = None) -> None:
        self.anomalies[kind] += 1
        (target or self.ensure_run(event)).events.append(
            SpanEventData(
                "workflow.anomaly",
                self.at,
                {"anomaly.kind": kind, "event.type": event.event_type, "event.id": event.event_id},
            )
        )

    def ensure_run(self, event: Event) -> _Part:
        if self.run_part is None:
            self.run_part = _Part("run", "", None, self.at)
            self.parts["run"] = self.run_part
        return self.run_part

    def note(self, part: _Part, event: Event, **attributes: Any) -> None:
        correlation = event.correlation_id
        base = (
            {"event.id": event.event_id, "event.correlation_id": correlation}
            if correlation
            else {"event.id": event.event_id}
        )
        if attributes:
            base.update({k: v for k, v in attributes.items() if v is not None})
        part.events.append(SpanEventData(event.event_type, self.at, base))

    def open(self, key: str, name: str, parent: str, event: Event, attributes: dict[str, Any]) -> _Part:
        """A new part; ``attributes`` becomes its own (the caller made it for it)."""
        part = _Part(key, name, parent, self.at, attributes=attributes)
        self.parts[key] = part
        return part

    # -- events --------------------------------------------------------------------------
    def feed(self, event: Event) -> None:
        self.fed += 1
        self.at = _ns(event.created_at)
        if event.event_id in self.seen:
            self.anomaly("duplicate_event", event)
            return
        self.seen.add(event.event_id)
        run = self.run_part or self.ensure_run(event)
        if self.terminal is not None:
            self.anomaly("after_terminal", event)
        data = event.event_data or {}
        kind = event.event_type
        if kind.startswith("run_"):
            self.run_event(run, event, data)
        elif kind.startswith("step_"):
            self.step_event(event, data)
        elif kind.startswith("wait_"):
            self.wait_event(event, data)
        elif kind in ("hook_created", "hook_received", "hook_disposed"):
            self.hook_event(event, data)
        elif kind == "hook_conflict":
            self.note(
                run,
                event,
                **{
                    "workflow.hook.token": data.get("token"),
                    "workflow.hook.conflicting_run_id": data.get("conflictingRunId"),
                },
            )
        elif kind == "attr_set":  # spec ≥ 5: set_attributes() on the run
            self.note(run, event)
        else:
            self.anomalies["unknown_event_type"] += 1
            self.note(run, event)

    def run_event(self, run: _Part, event: Event, data: dict[str, Any]) -> None:
        kind = event.event_type
        self.note(run, event)
        if kind == "run_created":
            if self.created_seen or len(self.seen) > 1:
                self.anomaly("run_created_out_of_order", event)
            self.created_seen = True
            run.start = min(run.start, self.at)
            self.workflow_name = self.workflow_name or data.get("workflowName", "")
            run.attributes.setdefault("deployment.id", data.get("deploymentId"))
            if self.payloads and "input" in data:
                run.attributes["workflow.input"] = _payload_attr(data["input"])
        elif kind in TERMINAL_RUN_EVENT_TYPES:
            if self.terminal is not None:
                return  # already counted as after_terminal
            self.terminal = event
            at = self.at
            self.end(run, at)
            status = kind.removeprefix("run_")
            run.attributes["workflow.run.status"] = status
            if kind == "run_failed":
                error = _event_error(data)
                code = data.get("errorCode") or (error.code if error else None)
                run.attributes["error.type"] = code or "Error"
                run.events.append(_exception_event(error, _error_type(data), at))
                run.status = Status(StatusCode.ERROR, error.message)
            elif kind == "run_completed" and self.payloads and "output" in data:
                run.attributes["workflow.output"] = _payload_attr(data["output"])

    def step_event(self, event: Event, data: dict[str, Any]) -> None:
        step_id = event.correlation_id or "?"
        key = f"step:{step_id}"
        step = self.parts.get(key)
        kind = event.event_type
        unseen = step is None
        if step is None:
            if kind != "step_created":
                self.anomaly("missing_start", event)
            name = data.get("stepName", "")
            step = self.open(
                key,
                f"step {short_name(name)}",
                "run",
                event,
                {"step.name": name, "step.id": step_id, "step.status": "pending"},
            )
            if self.payloads and "input" in data:
                step.attributes["step.input"] = _payload_attr(data["input"])
        if data.get("stepName") and not step.attributes.get("step.name"):
            step.attributes["step.name"] = data["stepName"]
            step.name = f"step {short_name(data['stepName'])}"
        if step.end is not None:
            self.anomaly("after_step_end", event, step)
            return
        if kind == "step_created":
            self.note(step, event)
            return
        if kind == "step_started":
            self.close_attempt(step_id, event, None)
            previous = self.retrying.pop(step_id, None)
            number = self.attempts.get(step_id, 0) + 1
            self.attempts[step_id] = number
            attributes = step.attributes
            attributes["step.attempt"] = number
            attributes["step.status"] = "running"
            attempt = self.open(
                f"attempt:{step_id}:{number}",
                f"attempt {number}",
                key,
                event,
                {"step.id": step_id, "step.name": attributes.get("step.name", ""), "step.attempt": number},
            )
            if previous is not None:
                # the delay this attempt came after, as it happened (4.8 logs carry no retryAfter); on
                # this attempt, not the one retried: that one was final (and maybe sent) when it ended
                attempt.attributes["step.retry.delay_ms"] = (self.at - (previous.end or self.at)) // 1_000_000
            self.open_attempt[step_id] = attempt.key
            return
        self.note(step, event)
        if kind == "step_retrying":
            self.close_attempt(step_id, event, "retrying", data)
            step.attributes["step.status"] = "pending"
        elif kind in ("step_completed", "step_failed"):
            outcome = kind.removeprefix("step_")
            if not unseen and step_id not in self.open_attempt and not self.attempts.get(step_id):
                self.anomaly("missing_start", event, step)  # created, never started
            self.close_attempt(step_id, event, outcome, data)
            at = self.at
            self.end(step, at)
            step.attributes["step.status"] = outcome
            step.attributes["step.attempt"] = self.attempts.get(step_id, 0)
            if outcome == "failed":
                error = _event_error(data)
                exception = _exception_event(error, _error_type(data), at)
                step.attributes["error.type"] = exception.attributes.get("exception.type")
                step.events.append(exception)
                step.status = Status(StatusCode.ERROR, error.message)
            elif self.payloads and "result" in data:
                step.attributes["step.output"] = _payload_attr(data["result"])

    def close_attempt(
        self, step_id: str, event: Event, outcome: str | None, data: dict[str, Any] | None = None
    ) -> None:
        key = self.open_attempt.pop(step_id, None)
        if key is None:
            return
        attempt = self.parts[key]
        at = self.at
        self.end(attempt, at)
        if outcome is None:  # a new start while the previous attempt never ended
            attempt.attributes["step.attempt.outcome"] = "abandoned"
            self.anomaly("attempt_without_end", event, attempt)
            return
        attempt.attributes["step.attempt.outcome"] = outcome
        if outcome in ("retrying", "failed"):
            error = _event_error(data or {})
            extra = {}
            retry_after = (data or {}).get("retryAfter")
            if isinstance(retry_after, datetime):
                extra["step.retry_after"] = _iso(retry_after)
                attempt.attributes["step.retry_after"] = extra["step.retry_after"]
            exception = _exception_event(error, _error_type(data or {}), at, extra)
            attempt.events.append(exception)
            attempt.attributes["error.type"] = exception.attributes.get("exception.type")
            attempt.status = Status(StatusCode.ERROR, error.message)
            if outcome == "retrying":
                self.retrying[step_id] = attempt

    def entity(self, kind: str, event: Event, *, created: str, name: str, id_attribute: str) -> _Part:
        """The span of a sleep or hook, opened by its first event (an anomaly unless its creation)."""
        entity_id = event.correlation_id or "?"
        part = self.parts.get(f"{kind}:{entity_id}")
        if part is None:
            if event.event_type != created:
                self.anomaly("missing_start", event)
            part = self.open(f"{kind}:{entity_id}", name, "run", event, {id_attribute: entity_id})
        return part

    def wait_event(self, event: Event, data: dict[str, Any]) -> None:
        wait = self.entity("wait", event, created="wait_created", name="sleep", id_attribute="workflow.wait.id")
        resume_at = data.get("resumeAt")
        if isinstance(resume_at, datetime):
            wait.attributes["workflow.wait.resume_at"] = _iso(resume_at)
        if wait.end is not None:
            self.anomaly("after_wait_end", event, wait)
            return
        self.note(wait, event)
        if event.event_type == "wait_completed":
            self.end(wait, self.at)

    def hook_event(self, event: Event, data: dict[str, Any]) -> None:
        hook = self.entity("hook", event, created="hook_created", name="hook", id_attribute="workflow.hook.id")
        token = data.get("token")
        if token:
            hook.attributes["workflow.hook.token"] = token
            hook.name = f"hook {token}"
        if data.get("isWebhook") is not None:
            hook.attributes["workflow.hook.is_webhook"] = bool(data["isWebhook"])
        attributes: dict[str, Any] = {}
        if self.payloads and "payload" in data:
            attributes["workflow.hook.payload"] = _payload_attr(data["payload"])
        if self.payloads and "metadata" in data:
            hook.attributes["workflow.hook.metadata"] = _payload_attr(data["metadata"])
        self.note(hook, event, **attributes)
        if event.event_type == "hook_received":
            hook.attributes["workflow.hook.received"] = int(hook.attributes.get("workflow.hook.received", 0)) + 1
            if hook.end is None:
                self.end(hook, self.at)
        elif event.event_type == "hook_disposed" and hook.end is None:
            self.end(hook, self.at)


class RunTraceBuilder:
    """One run's spans, built from its event log as the log grows.

    ``feed`` takes the events after the ones fed before (in event-id order); ``trace``,
    ``span_data`` and ``spans`` only read the state, so a live run is fed each new event once instead of
    rebuilding from the whole log on every change. ``build_run_trace`` is this fed once.
    """

    def __init__(
        self,
        run_id: str,
        run: WorkflowRun | None = None,
        *,
        resource: Resource | None = None,
        include_payloads: bool = True,
    ) -> None:
        self.run_id = run_id
        self.run = run
        self.resource = resource or Resource.get_empty()
        self._carried = parse_traceparent(run)
        self.trace_id = self._carried[0] if self._carried else trace_id_for(run_id)
        self._state = _Builder(run_id, run, include_payloads)
        self._reported: Counter[str] | None = None  # anomalies already added to the process's counts
        self._ids: dict[str, int] = {}  # part key → span id (a hash: each one computed once)
        #: the greatest event id fed (ids are ULIDs: event-id order is the log's order)
        self.last_event_id: str | None = None

    @property
    def events(self) -> int:
        """Events fed, duplicates included (the run span's ``workflow.events.count``)."""
        return self._state.fed

    @property
    def complete(self) -> bool:
        """The run's terminal event was fed: its run span (and all the rest) can be built."""
        return self._state.terminal is not None

    @property
    def closed(self) -> Sequence[str]:
        """Keys of the parts that ended, in the order they ended (append-only)."""
        return self._state.closed

    def has_seen(self, event_id: str) -> bool:
        return event_id in self._state.seen

    def feed(self, events: Iterable[Event]) -> None:
        state = self._state
        for event in events:
            state.feed(event)
            if self.last_event_id is None or event.event_id > self.last_event_id:
                self.last_event_id = event.event_id

    def _view(self) -> tuple[list[tuple[_Part, int, dict[str, Any]]], Counter[str]]:
        """The finished parts as a one-shot build would close them, without changing the state:
        at the run's end, parts still open close with it."""
        state = self._state
        anomalies = state.anomalies.copy()
        run = state.run_part
        run_extra: dict[str, Any] = {}
        if run is not None and not state.created_seen:
            anomalies["missing_run_created"] += 1
            run_extra["workflow.run.created_missing"] = True
        run_end = run.end if run is not None and state.terminal is not None else None
        out: list[tuple[_Part, int, dict[str, Any]]] = []
        for part in state.parts.values():
            extra = run_extra if part is run else {}
            end = part.end
            if end is None:
                if run_end is None:
                    continue
                end = run_end  # still open when the run ended: close it at the run's end
                extra = {**extra, "workflow.closed_by_run_end": True}
                if part.key.startswith(("step:", "attempt:")):
                    anomalies["unfinished_at_run_end"] += 1
            out.append((part, end, extra))
        return out, anomalies

    def _span_id(self, key: str) -> int:
        span_id = self._ids.get(key)
        if span_id is None:
            span_id = self._ids[key] = span_id_for(self.trace_id, self.run_id, key)
        return span_id

    def _span(self, part: _Part, end: int, extra: dict[str, Any], anomalies: Counter[str]) -> SpanData:
        state = self._state
        workflow_name = state.workflow_name
        name = part.name
        attributes: dict[str, Any] = {
            "workflow.run.id": self.run_id,
            "workflow.name": workflow_name,
            WORKFLOW_SPAN_KIND: _KIND_OF_KEY[part.key.partition(":")[0]],
            **part.attributes,
        }
        if extra:
            attributes.update(extra)
        if part is state.run_part:
            name = f"run {short_name(workflow_name)}"
            attributes["workflow.run.id"] = self.run_id
            attributes["workflow.name"] = workflow_name
            attributes["workflow.events.count"] = state.fed
            attributes["workflow.steps.count"] = sum(1 for k in state.parts if k.startswith("step:"))
            attributes["workflow.anomalies"] = sum(anomalies.values())
            attributes.setdefault("workflow.run.status", self.run.status if self.run else "running")
        if None in attributes.values():
            attributes = {k: v for k, v in attributes.items() if v is not None}
        if part.parent is None:
            carried = self._carried
            parent_id, remote = (carried[1], True) if carried else (None, False)
        else:
            parent_id, remote = self._span_id(part.parent), False
        return SpanData(
            self.trace_id,
            self._span_id(part.key),
            parent_id,
            remote,
            name,
            part.start,
            max(end, part.start),
            attributes,
            list(part.events),
            part.status,
        )

    def span_data(self, keys: Iterable[str] | None = None) -> list[SpanData]:
        """Spans of the finished parts, as plain data; with ``keys`` (e.g. ``closed[n:]``) only of
        those, at a cost that depends on how many keys, not on the size of the run."""
        state = self._state
        if keys is None or state.terminal is not None:
            view, anomalies = self._view()
            if keys is not None:
                wanted = set(keys)
                view = [item for item in view if item[0].key in wanted]
            return [self._span(part, end, extra, anomalies) for part, end, extra in view]
        out = []
        for key in dict.fromkeys(keys):
            part = state.parts.get(key)
            if part is None or part.end is None or part is state.run_part:
                continue
            out.append(self._span(part, part.end, {}, state.anomalies))
        return out

    def spans(self, keys: Iterable[str] | None = None) -> list[ReadableSpan]:
        """``span_data(keys)`` as SDK ``ReadableSpan`` objects."""
        return [readable_span(span, self.resource) for span in self.span_data(keys)]

    def trace(self) -> RunTrace:
        """Everything finished so far, as ``build_run_trace`` would give it for the events fed."""
        view, anomalies = self._view()
        spans = [self._span(part, end, extra, anomalies) for part, end, extra in view]
        if anomalies:  # most logs have none: no Counter arithmetic for them
            reported = self._reported if self._reported is not None else Counter()
            fresh = anomalies - reported
            if fresh:
                with _anomalies_lock:
                    _anomalies.update(fresh)
                self._reported = reported | anomalies
        return RunTrace(
            run_id=self.run_id,
            trace_id=self.trace_id,
            data=spans,
            complete=self.complete,
            anomalies=anomalies,
            resource=self.resource,
        )


def build_run_trace(
    run_id: str,
    events: list[Event],
    run: WorkflowRun | None = None,
    *,
    resource: Resource | None = None,
    include_payloads: bool = True,
) -> RunTrace:
    """Spans for everything finished in ``events`` (one run's log, in event-id order)."""
    builder = RunTraceBuilder(run_id, run, resource=resource, include_payloads=include_payloads)
    builder.feed(events)
    return builder.trace()
