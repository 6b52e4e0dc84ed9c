"""Attribute names and values this project puts on spans, as constants (one spelling, one place).

Names follow the SDK's own vocabulary (``workflow.run.id``, ``step.id``, ``step.attempt``) and
OpenTelemetry's semantic conventions (``error.type``, ``exception.*``). ``workflow.span.kind``
is ours: it says what a span built from the event log stands for, so readers (the store's run
summaries, the waterfall) never parse span names back.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "WORKFLOW_RUN_ID",
    "WORKFLOW_NAME",
    "WORKFLOW_SPAN_KIND",
    "STEP_ID",
    "STEP_NAME",
    "STEP_ATTEMPT",
    "ERROR_TYPE",
    "WORKFLOW_CONFLICT",
    "PEER_SERVICE",
    "RPC_SYSTEM",
    "RPC_SERVICE",
    "RPC_METHOD",
    "SpanKinds",
]

WORKFLOW_RUN_ID: Final = "workflow.run.id"
WORKFLOW_NAME: Final = "workflow.name"
STEP_ID: Final = "step.id"
STEP_NAME: Final = "step.name"
STEP_ATTEMPT: Final = "step.attempt"
ERROR_TYPE: Final = "error.type"
WORKFLOW_CONFLICT: Final = "workflow.conflict"
#: what an event-log span stands for: one of ``SpanKinds``
WORKFLOW_SPAN_KIND: Final = "workflow.span.kind"
#: on world-call spans, as the SDK's ``instrumentObject`` sets them (``rpc.method`` is the span name)
PEER_SERVICE: Final = "peer.service"
RPC_SYSTEM: Final = "rpc.system"
RPC_SERVICE: Final = "rpc.service"
RPC_METHOD: Final = "rpc.method"


class SpanKinds:
    """Values of ``workflow.span.kind``."""

    RUN: Final = "run"
    STEP: Final = "step"
    ATTEMPT: Final = "attempt"
    SLEEP: Final = "sleep"
    HOOK: Final = "hook"
    ALL: Final = (RUN, STEP, ATTEMPT, SLEEP, HOOK)
