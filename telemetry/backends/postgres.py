"""``PostgresWorld``: the world-postgres tables (schema ``workflow``), read in place.

Payload columns (``*_cbor``) are cbor-x documents; user values inside them are CBOR tag-64
byte strings holding the SDK's ``devl…`` bytes. Timestamps are ``timestamp`` columns in UTC.
Stream writes insert a chunk row and ``pg_notify('workflow_event_chunk', …)`` exactly as the
SDK does, and like world-postgres this world accepts writes to a finished run.
A lost connection is retried with backoff (logged), not surfaced as a crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import cbor2
import psycopg
from psycopg.rows import dict_row
from ulid import ULID

from ..errors import HookNotFoundError, WorkflowRunNotFoundError, WorkflowWorldError
from ..world import (
    Event,
    EventRequest,
    EventResult,
    Hook,
    Page,
    Pagination,
    Step,
    StreamChunks,
    StreamInfo,
    Wait,
    WorkflowRun,
)
from . import records

__all__ = ["PostgresWorld", "DEFAULT_URL"]

log = logging.getLogger("telemetry.backends.postgres")
DEFAULT_URL = "postgres://world:world@localhost:5432/world"
_RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError)


def _unwrap(value: Any) -> Any:
    """cbor-x writes a Uint8Array as tag 64 (RFC 8746 uint8 array): hand back plain bytes."""
    if isinstance(value, cbor2.CBORTag):
        return bytes(value.value) if value.tag == 64 else value
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _cbor(value: bytes | None, legacy: Any = None) -> Any:
    if value is None:
        return legacy
    return _unwrap(cbor2.loads(bytes(value)))


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


_RUN_COLUMNS = (
    "id, status, name, deployment_id, created_at, updated_at, started_at, completed_at, expired_at, "
    "spec_version, execution_context_cbor, execution_context, input_cbor, input, output_cbor, output, error_cbor, error"
)
_STEP_COLUMNS = (
    "run_id, step_id, step_name, status, attempt, created_at, updated_at, started_at, completed_at, retry_after, "
    "spec_version, input_cbor, input, output_cbor, output, error_cbor, error"
)


def _run_record(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "runId": row["id"],
        "status": row["status"],
        "workflowName": row["name"],
        "deploymentId": row["deployment_id"],
        "createdAt": _utc(row["created_at"]),
        "updatedAt": _utc(row["updated_at"]),
        "startedAt": _utc(row["started_at"]),
        "completedAt": _utc(row["completed_at"]),
        "expiredAt": _utc(row["expired_at"]),
        "specVersion": row["spec_version"],
        "executionContext": _cbor(row["execution_context_cbor"], row["execution_context"]),
        "input": _cbor(row["input_cbor"], row["input"]),
        "output": _cbor(row["output_cbor"], row["output"]),
        "error": _cbor(row["error_cbor"], row["error"]),
    }


def _step_record(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "runId": row["run_id"],
        "stepId": row["step_id"],
        "stepName": row["step_name"],
        "status": row["status"],
        "attempt": row["attempt"],
        "createdAt": _utc(row["created_at"]),
        "updatedAt": _utc(row["updated_at"]),
        "startedAt": _utc(row["started_at"]),
        "completedAt": _utc(row["completed_at"]),
        "retryAfter": _utc(row["retry_after"]),
        "specVersion": row["spec_version"],
        "input": _cbor(row["input_cbor"], row["input"]),
        "output": _cbor(row["output_cbor"], row["output"]),
        "error": _cbor(row["error_cbor"], row["error"]),
    }


def _event_record(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "runId": row["run_id"],
        "eventId": row["id"],
        "eventType": row["type"],
        "createdAt": _utc(row["created_at"]),
        "correlationId": row["correlation_id"],
        "eventData": _cbor(row["payload_cbor"], row["payload"]),
        "specVersion": row["spec_version"],
    }


def _hook_record(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "runId": row["run_id"],
        "hookId": row["hook_id"],
        "token": row["token"],
        "ownerId": row["owner_id"],
        "projectId": row["project_id"],
        "environment": row["environment"],
        "createdAt": _utc(row["created_at"]),
        "metadata": _cbor(row["metadata_cbor"], row["metadata"]),
        "isWebhook": row["is_webhook"],
        "specVersion": row["spec_version"],
    }


def _keyset(pagination: Pagination | None, default_order: str, default_limit: int) -> tuple[str, str, list[Any], int]:
    """(comparison SQL on ``id``, ORDER BY direction, params, limit) for keyset pagination."""
    p = pagination or Pagination()
    order = p.sort_order or default_order
    limit = p.limit or default_limit
    if p.cursor is None:
        return "true", order, [], limit
    return ("id < %s" if order == "desc" else "id > %s"), order, [p.cursor], limit


def _page(rows: list[Any], limit: int, key) -> Page[Any]:
    has_more = len(rows) > limit
    rows = rows[:limit]
    return Page(data=rows, cursor=key(rows[-1]) if has_more and rows else None, has_more=has_more)


class PostgresWorld:
    rpc_system = "postgresql"
    peer_service = "world-postgres"
    accepts_post_completion_writes = True

    def __init__(self, url: str | None = None, *, retries: int = 5, backoff: float = 0.2) -> None:
        self.url = url or os.environ.get("WORKFLOW_POSTGRES_URL") or DEFAULT_URL
        self.retries = retries
        self.backoff = backoff
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self.runs = _Runs(self)
        self.steps = _Steps(self)
        self.events = _Events(self)
        self.hooks = _Hooks(self)
        self.waits = _Waits(self)
        self.streams = _Streams(self)

    def __repr__(self) -> str:
        return f"PostgresWorld({_redact(self.url)!r})"

    async def query(self, sql: str, params: Sequence[Any] = (), *, fetch: bool = True) -> list[dict[str, Any]]:
        """Run one statement, reconnecting with backoff when the connection is lost."""
        async with self._lock:
            for attempt in range(self.retries + 1):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = await psycopg.AsyncConnection.connect(
                            self.url, autocommit=True, row_factory=dict_row
                        )
                    async with self._conn.cursor() as cursor:
                        await cursor.execute(sql, params)
                        return await cursor.fetchall() if fetch else []
                except _RETRYABLE as error:
                    await self._drop()
                    if attempt == self.retries:
                        raise WorkflowWorldError(
                            f"postgres world unreachable at {_redact(self.url)}: {str(error).strip()}", code="TRANSPORT"
                        ) from error
                    delay = min(self.backoff * 2**attempt, 5.0)
                    log.warning(
                        "postgres world: connection lost (%s); retrying in %.1fs (%d/%d)",
                        str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
                        delay,
                        attempt + 1,
                        self.retries,
                    )
                    await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _drop(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception:  # already broken
                pass
        self._conn = None

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


def _redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


class _Runs:
    def __init__(self, world: PostgresWorld) -> None:
        self.w = world

    async def get(self, run_id: str, *, resolve_data: str = "all") -> WorkflowRun:
        rows = await self.w.query(f"SELECT {_RUN_COLUMNS} FROM workflow.workflow_runs WHERE id = %s", [run_id])
        if not rows:
            raise WorkflowRunNotFoundError(run_id)
        return records.run_from(_run_record(rows[0]), resolve_data == "all")

    async def list(
        self, *, workflow_name=None, status=None, pagination: Pagination | None = None, resolve_data="all"
    ) -> Page[WorkflowRun]:
        """Newest first by ``created_at``, keyset-paged on (created_at, id)."""
        p = pagination or Pagination()
        order = "asc" if p.sort_order == "asc" else "desc"
        limit = p.limit or 20
        where, params = "true", []
        if p.cursor:
            stamp, run_id = p.cursor.split("|", 1)
            where = f"(created_at, id) {'<' if order == 'desc' else '>'} (%s::timestamptz AT TIME ZONE 'UTC', %s)"
            params = [stamp, run_id]
        rows = await self.w.query(
            f"SELECT {_RUN_COLUMNS} FROM workflow.workflow_runs WHERE {where}"
            " AND (%s::text IS NULL OR name = %s) AND (%s::text IS NULL OR status::text = %s)"
            f" ORDER BY created_at {order}, id {order} LIMIT %s",
            [*params, workflow_name, workflow_name, status, status, limit + 1],
        )
        runs = [records.run_from(_run_record(r), resolve_data == "all") for r in rows]
        return _page(runs, limit, records.run_cursor)


class _Steps:
    def __init__(self, world: PostgresWorld) -> None:
        self.w = world

    async def get(self, run_id: str | None, step_id: str, *, resolve_data: str = "all") -> Step:
        rows = await self.w.query(f"SELECT {_STEP_COLUMNS} FROM workflow.workflow_steps WHERE step_id = %s", [step_id])
        if not rows:
            raise WorkflowWorldError(f'Step "{step_id}" not found', status=404)
        return records.step_from(_step_record(rows[0]), resolve_data == "all")

    async def list(self, *, run_id: str, pagination: Pagination | None = None, resolve_data: str = "all") -> Page[Step]:
        where, order, params, limit = _keyset(pagination, "desc", 20)
        where = where.replace("id", "step_id")
        rows = await self.w.query(
            f"SELECT {_STEP_COLUMNS} FROM workflow.workflow_steps WHERE run_id = %s AND {where} ORDER BY step_id {order} LIMIT %s",
            [run_id, *params, limit + 1],
        )
        return _page(
            [records.step_from(_step_record(r), resolve_data == "all") for r in rows], limit, lambda s: s.step_id
        )


_EVENT_COLUMNS = "id, type, correlation_id, created_at, run_id, payload, payload_cbor, spec_version"


class _Events:
    def __init__(self, world: PostgresWorld) -> None:
        self.w = world

    async def counts_by_run(self) -> dict[str, int]:
        """Events stored per run: what a tailer polls (an index-only scan on run_id)."""
        rows = await self.w.query("SELECT run_id, count(*) AS n FROM workflow.workflow_events GROUP BY run_id")
        return {r["run_id"]: int(r["n"]) for r in rows}

    async def get(self, run_id: str, event_id: str, *, resolve_data: str = "all") -> Event:
        rows = await self.w.query(
            f"SELECT {_EVENT_COLUMNS} FROM workflow.workflow_events WHERE run_id = %s AND id = %s", [run_id, event_id]
        )
        if not rows:
            raise WorkflowWorldError(f'Event "{event_id}" not found', status=404)
        return records.event_from(_event_record(rows[0]), resolve_data == "all")

    async def list(
        self, *, run_id: str, pagination: Pagination | None = None, resolve_data: str = "all"
    ) -> Page[Event]:
        where, order, params, limit = _keyset(pagination, "asc", 1000)
        rows = await self.w.query(
            f"SELECT {_EVENT_COLUMNS} FROM workflow.workflow_events WHERE run_id = %s AND {where} ORDER BY id {order} LIMIT %s",
            [run_id, *params, limit + 1],
        )
        return _page(
            [records.event_from(_event_record(r), resolve_data == "all") for r in rows], limit, lambda e: e.event_id
        )

    async def list_by_correlation_id(
        self, *, correlation_id: str, run_id: str | None = None, pagination=None, resolve_data="all"
    ) -> Page[Event]:
        where, order, params, limit = _keyset(pagination, "asc", 1000)
        rows = await self.w.query(
            f"SELECT {_EVENT_COLUMNS} FROM workflow.workflow_events WHERE correlation_id = %s"
            f" AND (%s::text IS NULL OR run_id = %s) AND {where} ORDER BY id {order} LIMIT %s",
            [correlation_id, run_id, run_id, *params, limit + 1],
        )
        return _page(
            [records.event_from(_event_record(r), resolve_data == "all") for r in rows], limit, lambda e: e.event_id
        )

    async def changed_runs(self, since_event_id: str | None, limit: int = 1000) -> list[tuple[str, str]]:
        """(event id, run id) of events after ``since_event_id``, oldest first: what a tailer polls."""
        rows = await self.w.query(
            "SELECT id, run_id FROM workflow.workflow_events WHERE (%s::text IS NULL OR id > %s) ORDER BY id LIMIT %s",
            [since_event_id, since_event_id, limit],
        )
        return [(r["id"], r["run_id"]) for r in rows]

    async def create(self, run_id: str | None, event: EventRequest) -> EventResult:
        raise WorkflowWorldError(
            "PostgresWorld reads the event log; creating events is the SDK's job", code="UNSUPPORTED"
        )


_HOOK_COLUMNS = "run_id, hook_id, token, owner_id, project_id, environment, created_at, metadata, metadata_cbor, spec_version, is_webhook"


class _Hooks:
    def __init__(self, world: PostgresWorld) -> None:
        self.w = world

    async def get(self, hook_id: str) -> Hook:
        rows = await self.w.query(f"SELECT {_HOOK_COLUMNS} FROM workflow.workflow_hooks WHERE hook_id = %s", [hook_id])
        if not rows:
            raise HookNotFoundError(hook_id)
        return records.hook_from(_hook_record(rows[0]))

    async def get_by_token(self, token: str) -> Hook:
        rows = await self.w.query(f"SELECT {_HOOK_COLUMNS} FROM workflow.workflow_hooks WHERE token = %s", [token])
        if not rows:
            raise HookNotFoundError(token)
        return records.hook_from(_hook_record(rows[0]))

    async def list(self, *, run_id: str | None = None, pagination: Pagination | None = None) -> Page[Hook]:
        where, order, params, limit = _keyset(pagination, "asc", 1000)
        where = where.replace("id", "hook_id")
        rows = await self.w.query(
            f"SELECT {_HOOK_COLUMNS} FROM workflow.workflow_hooks WHERE (%s::text IS NULL OR run_id = %s) AND {where}"
            f" ORDER BY hook_id {order} LIMIT %s",
            [run_id, run_id, *params, limit + 1],
        )
        return _page([records.hook_from(_hook_record(r)) for r in rows], limit, lambda h: h.hook_id)


class _Waits:
    def __init__(self, world: PostgresWorld) -> None:
        self.w = world

    async def list(self, *, run_id: str | None = None) -> list[Wait]:
        rows = await self.w.query(
            "SELECT wait_id, run_id, status, resume_at, completed_at, created_at, updated_at FROM workflow.workflow_waits"
            " WHERE (%s::text IS NULL OR run_id = %s) ORDER BY wait_id",
            [run_id, run_id],
        )
        return [
            records.wait_from(
                {
                    "waitId": r["wait_id"],
                    "runId": r["run_id"],
                    "status": r["status"],
                    "createdAt": _utc(r["created_at"]),
                    "resumeAt": _utc(r["resume_at"]),
                    "completedAt": _utc(r["completed_at"]),
                    "updatedAt": _utc(r["updated_at"]),
                }
            )
            for r in rows
        ]


class _Streams:
    def __init__(self, world: PostgresWorld) -> None:
        self.w = world

    async def _insert(self, name: str, run_id: str, data: bytes, eof: bool) -> None:
        chunk_id = f"chnk_{ULID()}"
        await self.w.query(
            "INSERT INTO workflow.workflow_stream_chunks (id, stream_id, run_id, data, created_at, eof) VALUES (%s, %s, %s, %s, now(), %s)",
            [chunk_id, name, run_id, data, eof],
            fetch=False,
        )
        await self.w.query(
            "SELECT pg_notify('workflow_event_chunk', %s)", [json.dumps({"streamId": name, "chunkId": chunk_id})]
        )

    async def write(self, name: str, run_id: str, chunk: bytes | str) -> None:
        await self._insert(name, run_id, chunk.encode() if isinstance(chunk, str) else bytes(chunk), False)

    async def write_multi(self, name: str, run_id: str, chunks: Sequence[bytes | str]) -> None:
        for chunk in chunks:
            await self.write(name, run_id, chunk)

    async def close(self, name: str, run_id: str) -> None:
        await self._insert(name, run_id, b"", True)

    async def list(self, run_id: str) -> list[str]:
        rows = await self.w.query(
            "SELECT DISTINCT stream_id FROM workflow.workflow_stream_chunks WHERE run_id = %s ORDER BY stream_id",
            [run_id],
        )
        return [r["stream_id"] for r in rows]

    async def read_all(self, name: str) -> tuple[list[bytes], bool, int]:
        """(chunks before the first EOF, whether EOF was seen, rows stored after EOF)."""
        rows = await self.w.query(
            "SELECT data, eof FROM workflow.workflow_stream_chunks WHERE stream_id = %s ORDER BY id", [name]
        )
        chunks: list[bytes] = []
        for position, row in enumerate(rows):
            if row["eof"]:
                return chunks, True, len(rows) - position - 1
            chunks.append(bytes(row["data"]))
        return chunks, False, 0

    async def get_chunks(self, name: str, run_id: str, *, limit: int = 100, cursor: str | None = None) -> StreamChunks:
        chunks, done, _ = await self.read_all(name)
        return records.page_chunks(chunks, done, limit, cursor)

    async def get_info(self, name: str, run_id: str) -> StreamInfo:
        chunks, done, _ = await self.read_all(name)
        return StreamInfo(tail_index=len(chunks) - 1, done=done)
