"""The SDK's world entities as Python values (``@workflow/world`` runs, steps, events, hooks).

Field names are the SDK's, in snake_case; payloads (``input``, ``output``, ``result``…) hold
decoded Python values once a concrete world has read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")

RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
StepStatus = RunStatus
ResolveData = Literal["none", "all"]
SortOrder = Literal["asc", "desc"]

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
TERMINAL_RUN_EVENT_TYPES = frozenset({"run_completed", "run_failed", "run_cancelled"})


@dataclass(slots=True)
class StructuredError:
    message: str
    stack: str | None = None
    code: str | None = None


@dataclass(slots=True)
class WorkflowRun:
    run_id: str
    status: RunStatus
    workflow_name: str
    deployment_id: str
    created_at: datetime
    updated_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    expired_at: datetime | None = None
    spec_version: int | None = None
    execution_context: dict[str, Any] | None = None
    input: Any = None
    output: Any = None
    error: StructuredError | None = None


@dataclass(slots=True)
class Step:
    run_id: str
    step_id: str
    step_name: str
    status: StepStatus
    attempt: int
    created_at: datetime
    updated_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    retry_after: datetime | None = None
    spec_version: int | None = None
    input: Any = None
    output: Any = None
    error: StructuredError | None = None


@dataclass(slots=True)
class Event:
    run_id: str
    event_id: str
    event_type: str
    created_at: datetime
    correlation_id: str | None = None
    event_data: dict[str, Any] | None = None
    spec_version: int | None = None


@dataclass(slots=True)
class Hook:
    run_id: str
    hook_id: str
    token: str
    created_at: datetime
    owner_id: str = ""
    project_id: str = ""
    environment: str = ""
    metadata: Any = None
    is_webhook: bool | None = None
    spec_version: int | None = None


@dataclass(slots=True)
class Wait:
    wait_id: str
    run_id: str
    status: Literal["waiting", "completed"]
    created_at: datetime
    resume_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class Pagination:
    limit: int | None = None
    cursor: str | None = None
    sort_order: SortOrder | None = None


@dataclass(slots=True)
class Page(Generic[T]):
    data: list[T]
    cursor: str | None = None
    has_more: bool = False


@dataclass(slots=True)
class EventRequest:
    """What ``events.create`` takes: ``{eventType, correlationId?, eventData?}``."""

    event_type: str
    correlation_id: str | None = None
    event_data: dict[str, Any] | None = None


@dataclass(slots=True)
class EventResult:
    event: Event | None = None
    run: WorkflowRun | None = None
    step: Step | None = None
    hook: Hook | None = None
    wait: Wait | None = None


@dataclass(slots=True)
class StreamChunk:
    index: int
    data: bytes


@dataclass(slots=True)
class StreamChunks:
    data: list[StreamChunk] = field(default_factory=list)
    cursor: str | None = None
    has_more: bool = False
    done: bool = False


@dataclass(slots=True)
class StreamInfo:
    tail_index: int
    done: bool


@dataclass(slots=True)
class Changes:
    """Runs whose event log may have grown since ``token`` was handed out (a change feed).

    ``token`` is opaque: the caller stores it (a follower's checkpoint) and passes it back.
    ``None`` as the previous token means "from the beginning": every run with events.
    Readers make this cost what changed, not the history (a watermark query, a notification).
    """

    runs: list[str]
    token: str | None
    #: per run, the smallest new event id the feed saw, when it knows it (world-postgres). Events
    #: can commit out of id order (concurrent writers): a reader resumes just before this id
    #: instead of after the last id it read, so an event committed late is not skipped.
    since: dict[str, str] = field(default_factory=dict)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ns(moment: datetime) -> int:
    """Nanoseconds since the Unix epoch, exactly: integer arithmetic, because
    ``int(moment.timestamp() * 1e9)`` drifts by up to ±64 ns off the milliseconds the world wrote.
    A naive datetime is taken as UTC (world records are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000
