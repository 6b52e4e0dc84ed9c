"""workflow-telemetry: tracing, conflict filtering and run traces for Workflow SDK deployments."""

from .errors import (
    EntityConflictError,
    HookNotFoundError,
    PreconditionFailedError,
    RunExpiredError,
    StreamError,
    ThrottleError,
    TooEarlyError,
    WorkflowError,
    WorkflowRunNotFoundError,
    WorkflowWorldError,
    error_for_response,
    parse_retry_after,
)
from .streams import StreamWriter, stream_name
from .tracing import benign_counts, is_benign_conflict, record_benign, throw_with_trace
from .world import World, traced

__version__ = "0.1.0"

__all__ = [
    "EntityConflictError",
    "HookNotFoundError",
    "PreconditionFailedError",
    "RunExpiredError",
    "StreamError",
    "StreamWriter",
    "ThrottleError",
    "TooEarlyError",
    "World",
    "WorkflowError",
    "WorkflowRunNotFoundError",
    "WorkflowWorldError",
    "benign_counts",
    "error_for_response",
    "is_benign_conflict",
    "parse_retry_after",
    "record_benign",
    "stream_name",
    "throw_with_trace",
    "traced",
]
