"""The benign-conflict policy, applied to spans that arrive over OTLP.

A stream/telemetry-write span that failed with a post-completion 409 (the SDK's
``world.streams.writeToStream``, or world-vercel's ``http PUT …/stream/…``) is downgraded:
status Unset, ``workflow.conflict="benign"``, the original status kept in
``workflow.original_status``. The decision itself is ``telemetry.tracing.is_benign_conflict``.
"""

from __future__ import annotations

from typing import Any

from telemetry.semconv import WORKFLOW_CONFLICT
from telemetry.tracing import is_benign_conflict

from .otlp import SpanRecord

__all__ = ["apply_benign_policy", "operation_of"]

STATUS_UNSET, STATUS_ERROR = 0, 2
_STREAM_OPERATIONS = {"write": "streams.write", "write_multi": "streams.writeMulti", "close": "streams.close"}


def operation_of(span: SpanRecord) -> str | None:
    """The world operation a span stands for, in the SDK's span vocabulary."""
    if span.name.startswith("world."):
        return span.name
    operation = span.attributes.get("workflow.stream.operation")
    if isinstance(operation, str) and operation in _STREAM_OPERATIONS:
        return _STREAM_OPERATIONS[operation]
    url = span.attributes.get("url.full") or span.attributes.get("http.url") or ""
    method = span.attributes.get("http.request.method") or span.attributes.get("http.method") or ""
    if span.name.startswith("http ") and method == "PUT" and "/stream/" in str(url):
        return "streams.writeToStream"
    return None


def _status(value: Any) -> int | None:
    """An HTTP status from an attribute a client set: an int, or a short string of ASCII digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 3:
        return int(value)
    return None


def _candidates(span: SpanRecord) -> list[dict[str, Any]]:
    error_type = str(span.attributes.get("error.type") or "")
    status = _status(span.attributes.get("http.response.status_code"))
    if status is None and error_type.startswith("HTTP "):
        status = _status(error_type[5:].strip())
    found = [
        {
            "type": str(e["attributes"].get("exception.type") or ""),
            "message": str(e["attributes"].get("exception.message") or ""),
            "status": status,
        }
        for e in span.events
        if e["name"] == "exception"
    ]
    found.append({"type": error_type, "message": span.status_message, "status": status})
    return found


def apply_benign_policy(span: SpanRecord) -> bool:
    """Downgrade ``span`` in place when it is a benign post-completion conflict (True when it did).

    A span the app already recorded benign in-process (``record_benign``: status Unset,
    ``workflow.conflict="benign"``) is only flagged as such, so its run counts and shows it."""
    if span.status_code != STATUS_ERROR:
        if span.attributes.get(WORKFLOW_CONFLICT) == "benign":
            span.benign = True
        return False
    operation = operation_of(span)
    if operation is None:
        return False
    if not any(is_benign_conflict(c, operation=operation) for c in _candidates(span)):
        return False
    span.attributes["workflow.original_status"] = f"ERROR: {span.status_message}" if span.status_message else "ERROR"
    span.attributes[WORKFLOW_CONFLICT] = "benign"
    span.status_code = STATUS_UNSET
    span.status_message = ""
    span.benign = True
    return True
