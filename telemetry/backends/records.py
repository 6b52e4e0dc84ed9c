"""Turning a world's stored records into ``telemetry.world`` entities.

Both readers (local files, postgres rows) end up with the same camelCase-keyed mapping the
SDK works with; this module turns such a mapping into an entity and decodes the payloads in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from ..payloads import JSError, JSValue, decode_payload
from ..world import (
    Event,
    Hook,
    Page,
    Pagination,
    RunStatus,
    Step,
    StreamChunk,
    StreamChunks,
    StructuredError,
    Wait,
    WorkflowRun,
)

T = TypeVar("T")

#: eventData fields holding user payloads (the SDK's EVENT_DATA_REF_FIELDS).
PAYLOAD_FIELDS = ("input", "output", "result", "metadata", "payload")
_DATE_FIELDS = ("resumeAt", "retryAfter")


def parse_time(value: Any) -> datetime | None:
    if value.__class__ is str:  # the common case first: ISO 8601 text (Python 3.11 reads the ``Z`` itself)
        return datetime.fromisoformat(value)
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _required_time(value: Any) -> datetime:
    moment = parse_time(value)
    if moment is None:
        raise ValueError("createdAt is null")
    return moment


#: Tags of vercel-workflow's serialized errors (``error_serde.py``), and the foreign ones it keeps.
ERROR_TAGS = frozenset(
    {
        "Error",
        "FatalError",
        "StepCancelledError",
        "RetryableError",
        "HookConflictError",
        "TypeError",
        "SyntaxError",
        "ReferenceError",
        "RangeError",
        "EvalError",
        "URIError",
        "DOMException",
        "AggregateError",
        "RuntimeDecryptionError",
    }
)
#: JavaScript names a Python producer's errors are tagged with, and the Python class they came
#: from (what vercel-workflow revives them as, and what the app raised).
_PYTHON_CLASS = {"RangeError": "ValueError", "ReferenceError": "NameError"}
_PYTHON_STACK = "Traceback (most recent call last):"
_MAX_CAUSES = 8


@dataclass(slots=True)
class NamedError(StructuredError):
    """An error that says its class: spec version 5 writers serialize errors with their type."""

    name: str | None = None


def error_map(value: Any, depth: int = 0) -> dict[str, Any] | None:
    """A serialized error (spec version ≥ 5: devalue bytes, possibly compressed) as the map the
    4.x logs hold, ``{"name", "message", "stack"?, "cause"?}``; ``None`` if it is no error."""
    if isinstance(value, (bytes, bytearray)):
        value = decode_payload(bytes(value))
    name: str | None
    if isinstance(value, JSError):
        tag, name, message, stack, cause = value.name, value.name, value.message, value.stack, value.cause
    elif isinstance(value, JSValue) and value.type in ERROR_TAGS and isinstance(value.value, dict):
        payload = value.value
        if not isinstance(payload.get("message"), str):
            return None
        tag = value.type
        declared = payload.get("name")
        name = declared if isinstance(declared, str) and declared else None
        message, stack, cause = payload["message"], payload.get("stack"), payload.get("cause")
        if name is None:
            name = tag
            if isinstance(stack, str) and stack.startswith(_PYTHON_STACK):
                name = _PYTHON_CLASS.get(tag, tag)
    else:
        return None
    out: dict[str, Any] = {"name": name or tag, "message": str(message)}
    if isinstance(stack, str):
        out["stack"] = stack
    if cause is not None and depth < _MAX_CAUSES:
        nested = error_map(cause, depth + 1)
        if nested is not None:
            out["cause"] = nested
    return out


def structured_error(value: Any, code: Any = None) -> StructuredError | None:
    """Errors are stored as ``{message, stack, code}`` maps, as a string (4.x step events), or
    (spec version ≥ 5) as serialized bytes whose class becomes ``NamedError.name``."""
    if value is None:
        return None
    code = code if isinstance(code, str) else None
    if isinstance(value, (bytes, bytearray)):
        mapped = error_map(value)
        if mapped is None:
            return NamedError("(an error this reader cannot decode)", None, code)
        return NamedError(mapped["message"], mapped.get("stack"), code, mapped["name"])
    if isinstance(value, dict):
        return StructuredError(str(value.get("message", "")), value.get("stack"), value.get("code") or code)
    return StructuredError(str(value), None, code)


def _payload(value: Any, resolve: bool) -> Any:
    return decode_payload(value) if resolve else None


def run_from(d: dict[str, Any], resolve: bool = True) -> WorkflowRun:
    spec = d.get("specVersion")
    return WorkflowRun(
        run_id=d["runId"],
        status=d["status"],
        workflow_name=d["workflowName"],
        deployment_id=d.get("deploymentId", ""),
        created_at=_required_time(d["createdAt"]),
        updated_at=parse_time(d.get("updatedAt")),
        started_at=parse_time(d.get("startedAt")),
        completed_at=parse_time(d.get("completedAt")),
        expired_at=parse_time(d.get("expiredAt")),
        spec_version=int(spec) if spec is not None else None,
        execution_context=d.get("executionContext"),
        input=_payload(d.get("input"), resolve),
        output=_payload(d.get("output"), resolve),
        error=structured_error(d.get("error"), d.get("errorCode")),
    )


def step_from(d: dict[str, Any], resolve: bool = True) -> Step:
    return Step(
        run_id=d["runId"],
        step_id=d["stepId"],
        step_name=d["stepName"],
        status=d["status"],
        attempt=int(d.get("attempt") or 0),
        created_at=_required_time(d["createdAt"]),
        updated_at=parse_time(d.get("updatedAt")),
        started_at=parse_time(d.get("startedAt")),
        completed_at=parse_time(d.get("completedAt")),
        retry_after=parse_time(d.get("retryAfter")),
        spec_version=d.get("specVersion"),
        input=_payload(d.get("input"), resolve),
        output=_payload(d.get("output"), resolve),
        error=structured_error(d.get("error")),
    )


def event_data_from(data: dict[str, Any] | None, resolve: bool = True) -> dict[str, Any] | None:
    if data is None:
        return None
    out = dict(data)
    if isinstance(out.get("error"), (bytes, bytearray)):  # spec version ≥ 5: a serialized error
        out["error"] = error_map(out["error"]) or {"name": "Error", "message": "(an error this reader cannot decode)"}
    for key in PAYLOAD_FIELDS:
        if key in out:
            out[key] = _payload(out[key], resolve)
    for key in _DATE_FIELDS:
        if isinstance(out.get(key), str):
            out[key] = parse_time(out[key])
    return out


def event_from(d: dict[str, Any], resolve: bool = True) -> Event:
    return Event(
        run_id=d["runId"],
        event_id=d["eventId"],
        event_type=d["eventType"],
        created_at=_required_time(d["createdAt"]),
        correlation_id=d.get("correlationId"),
        event_data=event_data_from(d.get("eventData"), resolve),
        spec_version=d.get("specVersion"),
    )


def hook_from(d: dict[str, Any], resolve: bool = True) -> Hook:
    return Hook(
        run_id=d["runId"],
        hook_id=d["hookId"],
        token=d["token"],
        created_at=_required_time(d["createdAt"]),
        owner_id=d.get("ownerId", ""),
        project_id=d.get("projectId", ""),
        environment=d.get("environment", ""),
        metadata=_payload(d.get("metadata"), resolve),
        is_webhook=d.get("isWebhook"),
        spec_version=d.get("specVersion"),
    )


def wait_from(d: dict[str, Any]) -> Wait:
    return Wait(
        wait_id=d["waitId"],
        run_id=d["runId"],
        status=d["status"],
        created_at=_required_time(d["createdAt"]),
        resume_at=parse_time(d.get("resumeAt")),
        completed_at=parse_time(d.get("completedAt")),
        updated_at=parse_time(d.get("updatedAt")),
    )


#: The status an ``UnreadableRun`` shows: not one of the SDK's, so no filter or dashboard takes it for one.
UNREADABLE_STATUS = cast(RunStatus, "unreadable")


@dataclass(slots=True)
class UnreadableRun(WorkflowRun):
    """A run whose record file could not be read, listed anyway so that a listing neither loses
    it nor dies on it. ``created_at`` is the time in its id; ``path`` and ``reason`` say why."""

    path: str = ""
    reason: str = ""


def unreadable_run(run_id: str, created_ms: int, path: str, reason: str) -> UnreadableRun:
    return UnreadableRun(
        run_id=run_id,
        status=UNREADABLE_STATUS,
        workflow_name="",
        deployment_id="",
        created_at=datetime.fromtimestamp(created_ms / 1000, UTC),
        path=path,
        reason=reason,
    )


def run_cursor(run: WorkflowRun) -> str:
    """Runs page by ``createdAt`` then id, like world-local's ``"<createdAt>|<id>"`` cursor."""
    return f"{run.created_at.isoformat(timespec='microseconds')}|{run.run_id}"


def normal_run_cursor(cursor: str) -> str:
    """A run cursor in ``run_cursor``'s form, also from world-local's own (``…Z|<id>``, as the
    SDK's ``inspect runs`` hands out), so either pages from the same place."""
    moment, bar, run_id = cursor.partition("|")
    try:
        created = parse_time(moment)
    except ValueError:
        return cursor
    if created is None:
        return cursor
    return f"{created.astimezone(UTC).isoformat(timespec='microseconds')}{bar}{run_id}"


def paginate(
    items: list[T],
    key: Callable[[T], str],
    pagination: Pagination | None,
    default_order: str,
    default_limit: int = 20,
) -> Page[T]:
    """One page of ``items`` ordered by ``key`` (ids are ULIDs, so id order is time order).
    The cursor is the last key returned."""
    p = pagination or Pagination()
    descending = (p.sort_order or default_order) == "desc"
    items = sorted(items, key=key, reverse=descending)
    if p.cursor is not None:
        items = [i for i in items if (key(i) < p.cursor if descending else key(i) > p.cursor)]
    limit = p.limit or default_limit
    page = items[:limit]
    has_more = len(items) > limit
    return Page(data=page, cursor=key(page[-1]) if has_more and page else None, has_more=has_more)


def page_chunks(chunks: list[bytes], done: bool, limit: int, cursor: str | None) -> StreamChunks:
    """``getStreamChunks``: a page of the chunks before EOF; the cursor is the next index."""
    start = int(cursor) if cursor else 0
    page = chunks[start : start + max(1, min(limit, 1000))]
    end = start + len(page)
    has_more = end < len(chunks)
    return StreamChunks(
        data=[StreamChunk(index=start + i, data=c) for i, c in enumerate(page)],
        cursor=str(end) if has_more else None,
        has_more=has_more,
        done=done and not has_more,
    )
