"""Turning a world's stored records into ``telemetry.world`` entities.

Both readers (local files, postgres rows) end up with the same camelCase-keyed mapping the
SDK works with; this module turns such a mapping into an entity and decodes the payloads in it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..payloads import decode_payload
from ..world import Event, Hook, Page, Pagination, Step, StreamChunk, StreamChunks, StructuredError, Wait, WorkflowRun

#: eventData fields holding user payloads (the SDK's EVENT_DATA_REF_FIELDS).
PAYLOAD_FIELDS = ("input", "output", "result", "metadata", "payload")
_DATE_FIELDS = ("resumeAt", "retryAfter")


def parse_time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def structured_error(value: Any) -> StructuredError | None:
    """Errors are stored as ``{message, stack, code}`` maps, or (4.x step events) as a string."""
    if value is None:
        return None
    if isinstance(value, dict):
        return StructuredError(str(value.get("message", "")), value.get("stack"), value.get("code"))
    return StructuredError(str(value))


def _payload(value: Any, resolve: bool) -> Any:
    return decode_payload(value) if resolve else None


def run_from(d: dict[str, Any], resolve: bool = True) -> WorkflowRun:
    spec = d.get("specVersion")
    return WorkflowRun(
        run_id=d["runId"],
        status=d["status"],
        workflow_name=d["workflowName"],
        deployment_id=d.get("deploymentId", ""),
        created_at=parse_time(d["createdAt"]),
        updated_at=parse_time(d.get("updatedAt")),
        started_at=parse_time(d.get("startedAt")),
        completed_at=parse_time(d.get("completedAt")),
        expired_at=parse_time(d.get("expiredAt")),
        spec_version=int(spec) if spec is not None else None,
        execution_context=d.get("executionContext"),
        input=_payload(d.get("input"), resolve),
        output=_payload(d.get("output"), resolve),
        error=structured_error(d.get("error")),
    )


def step_from(d: dict[str, Any], resolve: bool = True) -> Step:
    return Step(
        run_id=d["runId"],
        step_id=d["stepId"],
        step_name=d["stepName"],
        status=d["status"],
        attempt=int(d.get("attempt") or 0),
        created_at=parse_time(d["createdAt"]),
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
        created_at=parse_time(d["createdAt"]),
        correlation_id=d.get("correlationId"),
        event_data=event_data_from(d.get("eventData"), resolve),
        spec_version=d.get("specVersion"),
    )


def hook_from(d: dict[str, Any], resolve: bool = True) -> Hook:
    return Hook(
        run_id=d["runId"],
        hook_id=d["hookId"],
        token=d["token"],
        created_at=parse_time(d["createdAt"]),
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
        created_at=parse_time(d["createdAt"]),
        resume_at=parse_time(d.get("resumeAt")),
        completed_at=parse_time(d.get("completedAt")),
        updated_at=parse_time(d.get("updatedAt")),
    )


def run_cursor(run: WorkflowRun) -> str:
    """Runs page by ``createdAt`` then id, like world-local's ``"<createdAt>|<id>"`` cursor."""
    return f"{run.created_at.isoformat(timespec='microseconds')}|{run.run_id}"


def paginate(
    items: list[Any], key, pagination: Pagination | None, default_order: str, default_limit: int = 20
) -> Page[Any]:
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
