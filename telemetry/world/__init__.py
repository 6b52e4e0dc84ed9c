"""The World: the SDK's storage and streams, as typed async protocols, plus ``traced``."""

from .model import (
    TERMINAL_RUN_EVENT_TYPES,
    TERMINAL_STATUSES,
    Event,
    EventRequest,
    EventResult,
    Hook,
    Page,
    Pagination,
    Step,
    StreamChunk,
    StreamChunks,
    StreamInfo,
    StructuredError,
    Wait,
    WorkflowRun,
)
from .protocol import Events, Hooks, Runs, Steps, Streams, World
from .traced import SPAN_METHODS, TracedWorld, traced

__all__ = [
    "TERMINAL_RUN_EVENT_TYPES",
    "TERMINAL_STATUSES",
    "SPAN_METHODS",
    "Event",
    "EventRequest",
    "EventResult",
    "Events",
    "Hook",
    "Hooks",
    "Page",
    "Pagination",
    "Runs",
    "Step",
    "Steps",
    "StreamChunk",
    "StreamChunks",
    "StreamInfo",
    "Streams",
    "StructuredError",
    "TracedWorld",
    "Wait",
    "World",
    "WorkflowRun",
    "traced",
]
