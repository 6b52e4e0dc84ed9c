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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from . import __version__
from .payloads import to_jsonable
from .semconv import WORKFLOW_SPAN_KIND, SpanKinds
from .trace_identity import parse_traceparent, span_id_for, trace_id_for
from .world import TERMINAL_RUN_EVENT_TYPES, Event, StructuredError, WorkflowRun

__all__ = ["RunTrace", "build_run_trace", "anomaly_counts", "trace_id_for", "short_name"]

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
    return int(round(moment.timestamp() * 1000)) * 1_000_000


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _not_plain_json(value: Any) -> Any:
    raise TypeError("not plain JSON")


def _payload_attr(value: Any) -> str:
    try:  # most payloads are plain JSON already; JS-only values (undefined, Date, NaN…) take the slow path
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=_not_plain_json)
    except (TypeError, ValueError):
        text = json.dumps(to_jsonable(value), default=str, ensure_ascii=False)
    return text if len(text) <= MAX_PAYLOAD_CHARS else text[: MAX_PAYLOAD_CHARS - 1] + "…"


@dataclass
class _Part:
    """A span being assembled from events."""

    key: str
    name: str
    parent: str | None
    start: int
    end: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    status: Status = field(default_factory=lambda: Status(StatusCode.UNSET))


@dataclass
class RunTrace:
    run_id: str
    trace_id: int
    spans: list[ReadableSpan]
    complete: bool
    anomalies: Counter[str]


def _exception_event(
    error: StructuredError | None, fallback_type: str, at: int, extra: dict[str, Any] | None = None
) -> SpanEvent:
    error = error or StructuredError("")
    first_line = (error.stack or "").split("\n", 1)[0]
    kind = first_line.split(":", 1)[0].strip() if ":" in first_line else fallback_type
    attributes: dict[str, Any] = {"exception.type": kind or fallback_type, "exception.message": error.message}
    if error.stack:
        attributes["exception.stacktrace"] = error.stack
    attributes.update(extra or {})
    return SpanEvent("exception", attributes, timestamp=at)


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
        self.attempts: Counter[str] = Counter()
        self.open_attempt: dict[str, str] = {}
        self.run_part: _Part | None = None
        self.created_seen = False
        self.retrying: dict[str, _Part] = {}

    # -- helpers -------------------------------------------------------------------------
    def anomaly(self, kind: str, event: Event, target: _Part | None = None) -> None:
        self.anomalies[kind] += 1
        (target or self.ensure_run(event)).events.append(
            SpanEvent(
                "workflow.anomaly",
                {"anomaly.kind": kind, "event.type": event.event_type, "event.id": event.event_id},
                timestamp=_ns(event.created_at),
            )
        )

    def ensure_run(self, event: Event) -> _Part:
        if self.run_part is None:
            self.run_part = _Part("run", "", None, _ns(event.created_at))
            self.parts["run"] = self.run_part
        return self.run_part

    def note(self, part: _Part, event: Event, **attributes: Any) -> None:
        base = {"event.id": event.event_id}
        if event.correlation_id:
            base["event.correlation_id"] = event.correlation_id
        base.update({k: v for k, v in attributes.items() if v is not None})
        part.events.append(SpanEvent(event.event_type, base, timestamp=_ns(event.created_at)))

    def open(self, key: str, name: str, parent: str, event: Event, **attributes: Any) -> _Part:
        part = _Part(key, name, parent, _ns(event.created_at), attributes=dict(attributes))
        self.parts[key] = part
        return part

    # -- events --------------------------------------------------------------------------
    def feed(self, event: Event) -> None:
        if event.event_id in self.seen:
            self.anomaly("duplicate_event", event)
            return
        self.seen.add(event.event_id)
        run = self.ensure_run(event)
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
            run.start = min(run.start, _ns(event.created_at))
            self.workflow_name = self.workflow_name or data.get("workflowName", "")
            run.attributes.setdefault("deployment.id", data.get("deploymentId"))
            if self.payloads and "input" in data:
                run.attributes["workflow.input"] = _payload_attr(data["input"])
        elif kind in TERMINAL_RUN_EVENT_TYPES:
            if self.terminal is not None:
                return  # already counted as after_terminal
            self.terminal = event
            run.end = _ns(event.created_at)
            status = kind.removeprefix("run_")
            run.attributes["workflow.run.status"] = status
            if kind == "run_failed":
                error = _event_error(data)
                code = data.get("errorCode") or (error.code if error else None)
                run.attributes["error.type"] = code or "Error"
                run.events.append(_exception_event(error, "Error", run.end))
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
                **{"step.name": name, "step.id": step_id, "step.status": "pending"},
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
            if previous is not None:  # the retry time, as it happened (4.8 logs carry no retryAfter)
                at = _ns(event.created_at)
                previous.attributes["step.retry.next_attempt_at"] = _iso(event.created_at)
                previous.attributes["step.retry.delay_ms"] = (at - (previous.end or at)) // 1_000_000
            self.attempts[step_id] += 1
            number = self.attempts[step_id]
            step.attributes.update({"step.attempt": number, "step.status": "running"})
            attempt = self.open(
                f"attempt:{step_id}:{number}",
                f"attempt {number}",
                key,
                event,
                **{"step.id": step_id, "step.name": step.attributes.get("step.name", ""), "step.attempt": number},
            )
            self.open_attempt[step_id] = attempt.key
            return
        self.note(step, event)
        if kind == "step_retrying":
            self.close_attempt(step_id, event, "retrying", data)
            step.attributes["step.status"] = "pending"
        elif kind in ("step_completed", "step_failed"):
            outcome = kind.removeprefix("step_")
            if not unseen and step_id not in self.open_attempt and not self.attempts[step_id]:
                self.anomaly("missing_start", event, step)  # created, never started
            self.close_attempt(step_id, event, outcome, data)
            step.end = _ns(event.created_at)
            step.attributes["step.status"] = outcome
            step.attributes["step.attempt"] = self.attempts[step_id]
            if outcome == "failed":
                error = _event_error(data)
                exception = _exception_event(error, "Error", step.end)
                step.attributes["error.type"] = exception.attributes["exception.type"]
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
        attempt.end = _ns(event.created_at)
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
            exception = _exception_event(error, "Error", attempt.end, extra)
            attempt.events.append(exception)
            attempt.attributes["error.type"] = exception.attributes["exception.type"]
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
            part = self.open(f"{kind}:{entity_id}", name, "run", event, **{id_attribute: entity_id})
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
            wait.end = _ns(event.created_at)

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
                hook.end = _ns(event.created_at)
        elif event.event_type == "hook_disposed" and hook.end is None:
            hook.end = _ns(event.created_at)

    # -- output --------------------------------------------------------------------------
    def finish(self) -> None:
        run = self.run_part
        if run is not None and not self.created_seen:
            self.anomalies["missing_run_created"] += 1
            run.attributes["workflow.run.created_missing"] = True
        if run is None or self.terminal is None:
            return
        for part in self.parts.values():
            if part.end is None:  # still open when the run ended: close it at the run's end
                part.end = run.end
                part.attributes["workflow.closed_by_run_end"] = True
                if part.key.startswith(("step:", "attempt:")):
                    self.anomalies["unfinished_at_run_end"] += 1


def build_run_trace(
    run_id: str,
    events: list[Event],
    run: WorkflowRun | None = None,
    *,
    resource: Resource | None = None,
    include_payloads: bool = True,
) -> RunTrace:
    """Spans for everything finished in ``events`` (one run's log, in event-id order)."""
    builder = _Builder(run_id, run, include_payloads)
    for event in events:
        builder.feed(event)
    builder.finish()
    trace_id = trace_id_for(run_id, run)
    carried = parse_traceparent(run)
    resource = resource or Resource.get_empty()
    workflow_name = builder.workflow_name
    common = {"workflow.run.id": run_id, "workflow.name": workflow_name}

    def context(key: str) -> SpanContext:
        return SpanContext(
            trace_id, span_id_for(trace_id, run_id, key), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
        )

    spans: list[ReadableSpan] = []
    run_part = builder.run_part
    complete = builder.terminal is not None
    if run_part is not None:
        run_part.name = f"run {short_name(workflow_name)}"
        run_part.attributes.update(common)
        run_part.attributes["workflow.events.count"] = len(events)
        run_part.attributes["workflow.steps.count"] = sum(1 for k in builder.parts if k.startswith("step:"))
        run_part.attributes["workflow.anomalies"] = sum(builder.anomalies.values())
        run_part.attributes.setdefault("workflow.run.status", run.status if run else "running")
    for part in builder.parts.values():
        if part.end is None:
            continue
        if part.parent is None:
            parent = (
                SpanContext(trace_id, carried[1], is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
                if carried
                else None
            )
        else:
            parent = context(part.parent)
        attributes = {**common, WORKFLOW_SPAN_KIND: _KIND_OF_KEY[part.key.split(":", 1)[0]], **part.attributes}
        if None in attributes.values():
            attributes = {k: v for k, v in attributes.items() if v is not None}
        spans.append(
            ReadableSpan(
                name=part.name,
                context=context(part.key),
                parent=parent,
                resource=resource,
                attributes=attributes,
                events=part.events,
                kind=SpanKind.INTERNAL,
                status=part.status,
                start_time=part.start,
                end_time=max(part.end, part.start),
                instrumentation_scope=SCOPE,
            )
        )
    if builder.anomalies:
        with _anomalies_lock:
            _anomalies.update(builder.anomalies)
    return RunTrace(run_id=run_id, trace_id=trace_id, spans=spans, complete=complete, anomalies=builder.anomalies)
