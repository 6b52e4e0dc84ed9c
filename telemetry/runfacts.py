"""What the per-run analyses (``reconcile``, ``timing``) read of a run: its event log reduced to
(type, correlation id, time), and the app's own spans, told apart by what the SDK made them for.

Both analyses are pure functions over these plain values, so the collector (rows of its store),
``wft reconcile`` (a world and a store file) and the tests (real harness output) feed them alike.

The app's spans are classified by the attributes and names the SDK 4.x gives them
(``/work/shared/reference`` "Span names in 4.x"; the Python instrumentation uses the same):

- a **step delivery** is the ``STEP <step>`` CONSUMER span of one queue delivery of a step. It carries
  ``step.id``; ``step.status`` is set on it only once the delivery's ``step_started`` went through,
  so a delivery with ``step.status`` is one *attempt* of the step. Deliveries that were skipped (the
  step had already ended), delayed (its retry time had not come) or throttled have no status and
  are not attempts. (Its ``step.attempt`` is the queue's delivery count, not the step's attempt
  number: a delayed delivery counts there too, so attempts are counted, not matched by number.)
- a **workflow delivery** is a ``WORKFLOW <workflow>`` span: one invocation of the workflow function.
- a **world call** is a ``world.*`` span (the SDK's ``instrumentObject`` names).

Spans built from the event log (``workflow.span.kind`` set) are none of these.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from .semconv import STEP_ID, WORKFLOW_RUN_ID, WORKFLOW_SPAN_KIND
from .trace_identity import parse_traceparent
from .world import Event

__all__ = [
    "QUEUE_EXECUTION_TIME_MS",
    "QUEUE_OVERHEAD_MS",
    "READ_ATTRIBUTES",
    "STEP_STATUS",
    "AppSpan",
    "LogEvent",
    "Roles",
    "carries_traceparent",
]

#: on a ``STEP`` span: the step's status as ``step_started`` returned it (absent when it never started)
STEP_STATUS: Final = "step.status"
#: on a ``WORKFLOW`` span: ``execute`` (the SDK's ``workflow.operation``)
WORKFLOW_OPERATION: Final = "workflow.operation"
#: on delivery spans: how long the message waited in the queue before this delivery (the SDK's measure)
QUEUE_OVERHEAD_MS: Final = "workflow.queue.overhead_ms"
#: on ``STEP`` spans: how long the step function ran (the SDK's measure)
QUEUE_EXECUTION_TIME_MS: Final = "workflow.queue.execution_time_ms"
_MESSAGING_OPERATION: Final = "messaging.operation.type"

#: every attribute the analyses read: a store need only extract these from a span's attributes
READ_ATTRIBUTES: Final = (
    WORKFLOW_SPAN_KIND,
    WORKFLOW_RUN_ID,
    STEP_ID,
    STEP_STATUS,
    WORKFLOW_OPERATION,
    _MESSAGING_OPERATION,
    QUEUE_OVERHEAD_MS,
    QUEUE_EXECUTION_TIME_MS,
)


class Roles:
    """What an app span stands for (``AppSpan.role``)."""

    STEP: Final = "step"  # a step delivery
    WORKFLOW: Final = "workflow"  # a workflow delivery
    WORLD: Final = "world"  # a world call


def _ns(moment: datetime) -> int:
    return int(round(moment.timestamp() * 1000)) * 1_000_000  # world times are whole milliseconds


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One event of a run's log: what happened, to what (step/hook/wait id), when, and for step
    events the step's name (``stepName`` of its data), which the reports show."""

    event_type: str
    correlation_id: str | None
    at_ns: int
    step_name: str | None = None

    @classmethod
    def of(cls, event: Event) -> LogEvent:
        name = (event.event_data or {}).get("stepName")
        return cls(
            event.event_type, event.correlation_id, _ns(event.created_at), name if isinstance(name, str) else None
        )


@dataclass(frozen=True, slots=True)
class AppSpan:
    """One span the app exported, with the attributes of ``READ_ATTRIBUTES`` it has (others are
    ignored). Ids are hex strings; ``parent_span_id`` is empty for a root."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]

    @property
    def role(self) -> str | None:
        """One of ``Roles``, or None for every other span (event-log spans included)."""
        attributes = self.attributes
        if attributes.get(WORKFLOW_SPAN_KIND) is not None:
            return None
        name = self.name
        if isinstance(attributes.get(STEP_ID), str) and (
            name.startswith("STEP ") or attributes.get(_MESSAGING_OPERATION) == "process"
        ):
            return Roles.STEP
        if name.startswith("WORKFLOW ") or attributes.get(WORKFLOW_OPERATION) == "execute":
            return Roles.WORKFLOW
        if name.startswith("world."):
            return Roles.WORLD
        return None

    @property
    def run_id(self) -> str | None:
        value = self.attributes.get(WORKFLOW_RUN_ID)
        return value if isinstance(value, str) else None

    @property
    def started_attempt(self) -> bool:
        """A step delivery whose ``step_started`` went through (``step.status`` set)."""
        return isinstance(self.attributes.get(STEP_STATUS), str)

    def number(self, name: str) -> float | None:
        """A numeric attribute (bools are not numbers here)."""
        value = self.attributes.get(name)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def carries_traceparent(execution_context: Any) -> bool:
    """The run stored a W3C traceparent (``executionContext.traceCarrier``): the app that started it
    ran OpenTelemetry, so its spans are expected."""
    if not isinstance(execution_context, Mapping):
        return False
    return parse_traceparent(types.SimpleNamespace(execution_context=execution_context)) is not None
