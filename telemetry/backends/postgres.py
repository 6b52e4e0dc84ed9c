"""``PostgresWorld``: the world-postgres tables (schema ``workflow``), read in place.

Payload columns (``*_cbor``) are cbor-x documents; user values inside them are CBOR tag-64
byte strings holding the SDK's ``devl…`` bytes. Timestamps are ``timestamp`` columns in UTC.
Stream writes insert a chunk row and ``pg_notify('workflow_event_chunk', …)`` exactly as the
SDK does, and like world-postgres this world accepts writes to a finished run.
A lost connection is retried with backoff (logged), not surfaced as a crash.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2
import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row, tuple_row
from ulid import ULID

from ..errors import HookNotFoundError, WorkflowRunNotFoundError, WorkflowWorldError
from ..world import (
    Around,
    Changes,
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

__all__ = ["PostgresWorld", "DEFAULT_URL", "redact_url"]

log = logging.getLogger("telemetry.backends.postgres")
DEFAULT_URL = "postgres://world:world@localhost:5432/world"
_RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError)


def _uint8_array(first: Any, second: Any) -> Any:
    """cbor-x writes a Uint8Array as tag 64 (RFC 8746 uint8 array): hand back plain bytes. A hook
    the decoder calls for each tag it has no decoder of its own for, so no walk over the document.
    cbor2 6 calls it with (tag, immutable), cbor2 5 with (decoder, tag)."""
    tag = first if isinstance(first, cbor2.CBORTag) else second
    return bytes(tag.value) if tag.tag == 64 else tag


def _cbor(value: bytes | None, legacy: Any = None) -> Any:
    if value is None:
        return legacy
    return cbor2.loads(value, tag_hook=_uint8_array)


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


_RUN_COLUMNS = (
    "id, status, name, deployment_id, created_at, updated_at, started_at, completed_at, expired_at, "
    "spec_version, execution_context_cbor, execution_context, input_cbor, input, output_cbor, output, error_cbor, error"
)
#: the same, without the payloads a listing that does not resolve them would only decode and drop
_RUN_COLUMNS_BARE = _RUN_COLUMNS.replace(
    "input_cbor, input, output_cbor, output", "NULL AS input_cbor, NULL AS input, NULL AS output_cbor, NULL AS output"
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


def _event_from_row(row: tuple[Any, ...], resolve: bool) -> Event:
    """``records.event_from(_event_record(row))`` for a tuple row of ``_EVENT_COLUMNS``, without
    the two dicts on the way (one per event of an export)."""
    event_id, kind, correlation_id, created_at, run_id, payload, payload_cbor, spec_version = row
    if created_at is None:
        raise ValueError("createdAt is null")
    return Event(
        run_id=run_id,
        event_id=event_id,
        event_type=kind,
        created_at=created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC),
        correlation_id=correlation_id,
        event_data=records.event_data_from(_cbor(payload_cbor, payload), resolve),
        spec_version=spec_version,
    )


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


def _page(rows: list[Any], limit: int, key: Callable[[Any], str]) -> Page[Any]:
    has_more = len(rows) > limit
    rows = rows[:limit]
    return Page(data=rows, cursor=key(rows[-1]) if has_more and rows else None, has_more=has_more)


class PostgresWorld:
    rpc_system = "postgresql"
    peer_service = "world-postgres"
    accepts_post_completion_writes = True

    def __init__(
        self,
        url: str | None = None,
        *,
        retries: int = 5,
        backoff: float = 0.2,
        feed_window: float = 5.0,
        feed_max_lookback: float = 600.0,
    ) -> None:
        """``feed_window``: seconds the change feed looks back behind the server's clock, for ids
        minted before their transaction started writing and for writers whose clock runs behind
        the database's. ``feed_max_lookback``: the longest a still-open transaction holds it."""
        self.url = url or os.environ.get("WORKFLOW_POSTGRES_URL") or DEFAULT_URL
        self.retries = retries
        self.backoff = backoff
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self.feed = _Feed(self, feed_window, feed_max_lookback)
        self.wakeups = _Wakeups(self)
        self.runs = _Runs(self)
        self.steps = _Steps(self)
        self.events = _Events(self)
        self.hooks = _Hooks(self)
        self.waits = _Waits(self)
        self.streams = _Streams(self)

    def __repr__(self) -> str:
        return f"PostgresWorld({_redact(self.url)!r})"

    async def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = (), *, fetch: bool = True
    ) -> list[dict[str, Any]]:
        """Run one statement, reconnecting with backoff when the connection is lost."""
        rows: list[dict[str, Any]] = await self._run(sql, params, fetch, dict_row)
        return rows

    async def query_tuples(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = (), *, binary: bool = False
    ) -> list[tuple[Any, ...]]:
        """``query``, with each row a tuple in the statement's column order: for the hot loops
        (an export's events), which would only take each dict apart again. ``binary``: the rows
        in PostgreSQL's binary format (the same values; ``bytea`` and timestamps cost less to
        send and to load than as text)."""
        rows: list[tuple[Any, ...]] = await self._run(sql, params, True, tuple_row, binary)
        return rows

    async def _run(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any], fetch: bool, rows: Any, binary: bool = False
    ) -> list[Any]:
        async with self._lock:
            for attempt in range(self.retries + 1):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = await self._connect()
                        # small keyset queries only: JIT would compile for ~0.5 s per statement when
                        # the planner overestimates a range (the change feed's, at 10^6 events)
                        await self._conn.execute("SET jit = off")
                    async with self._conn.cursor(row_factory=rows) as cursor:
                        await cursor.execute(sql, params, binary=binary)
                        return await cursor.fetchall() if fetch else []
                except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as error:
                    raise WorkflowWorldError(await self._missing(error), code="NO_SCHEMA") from None
                except _RETRYABLE as error:
                    await self._drop()
                    refused = _refusal(error)
                    if refused is not None:  # wrong password, no such role or database: retrying cannot help
                        raise WorkflowWorldError(
                            f"postgres world at {_redact(self.url)} refused the connection: {refused}", code="AUTH"
                        ) from None
                    if attempt == self.retries:
                        raise WorkflowWorldError(
                            f"postgres world unreachable at {_redact(self.url)}: {' '.join(str(error).split())}",
                            code="TRANSPORT",
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

    async def _connect(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        try:
            return await psycopg.AsyncConnection.connect(self.url, autocommit=True, row_factory=dict_row)
        except psycopg.ProgrammingError:  # psycopg's words quote the URL, which may hold the password
            raise WorkflowWorldError(
                f"not a PostgreSQL URL: {_redact(self.url)} (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)",
                code="BAD_URL",
            ) from None

    async def _missing(self, error: psycopg.Error) -> str:
        """What a statement naming a missing relation says about the database: no ``workflow``
        schema at all (the world was never set up there), or one older than this reader."""
        what = (error.diag.message_primary or str(error)).strip()
        fix = "run `npx --package=@workflow/world-postgres bootstrap` against it (the world's migrations)"
        try:
            assert self._conn is not None
            async with self._conn.cursor() as cursor:
                await cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'workflow'")
                schema = await cursor.fetchone() is not None
        except psycopg.Error:
            schema = True  # cannot tell: say what failed
        if not schema:
            return (
                f"postgres database at {_redact(self.url)} has no `workflow` schema: not a world-postgres database"
                f" (wrong database in the URL?), or {fix}"
            )
        where = f"postgres database at {_redact(self.url)}"
        return f"{where}: {what}: its `workflow` schema is older than this reader; {fix}"

    async def _drop(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception:  # already broken
                pass
        self._conn = None

    async def close(self) -> None:
        """Close the connection. Safe from any event loop and while a query runs elsewhere (a
        service stopping a tailer that runs in its own thread): closing does not take the lock."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # already broken
                pass
        await self.wakeups.close()


def redact_url(url: str) -> str:
    """A world-postgres URL as it may be shown: without its password."""
    return _redact(url)


def _redact(url: str) -> str:
    """The URL without its password, for logs and errors (also ``password=`` in a query string
    or a ``key=value`` connection string)."""
    url = _PASSWORD_PARAM.sub(r"\1***", url)
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"


_PASSWORD_PARAM = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)", re.IGNORECASE)

#: What a server that answered says when it will not let us in: the same on every retry.
_REFUSALS = (
    ("password authentication failed", "wrong user or password (fix them in the URL)"),
    ("no password supplied", "the server wants a password (put one in the URL: postgres://USER:PASSWORD@HOST/DB)"),
    ("does not exist", None),  # role or database: the server's own words name which
    ("no pg_hba.conf entry", "the server does not accept this user, database or address (its pg_hba.conf)"),
)


def _refusal(error: Exception) -> str | None:
    """Why the server refused the connection for good (credentials, role, database), or None for
    a failure that may pass (unreachable, connection lost)."""
    text = " ".join(str(error).split())
    for needle, meaning in _REFUSALS:
        if needle in text:
            fatal = text.split("FATAL:", 1)[-1].strip()
            return f"{fatal}: fix the URL" if meaning is None else f"{meaning}; the server said: {fatal}"
    return None


_ULID_TOP = "Z" * 26  # above every ULID (Crockford base32; "Z" is its greatest digit)
_KEEP_MARGIN_MS = 5000  # our clock against the server's, for what a grouped pass remembers

#: Prefixes of the event ids (``wevt_``, ``evnt_``…), found with one index probe each, and the
#: events above a time floor under each prefix (an index range scan each), with the snapshot and
#: the server's clock, all under one statement's snapshot. ``%(grouped)s``: one row per run (its
#: smallest new id) instead of one per event, plus the events from ``%(keep)s`` on, one by one:
#: what a pass without a remembered window (a restart after downtime) needs, in memory bounded by
#: the runs rather than by the backlog of events.
_WINDOW_SQL = """
WITH RECURSIVE prefixes(pre) AS (
    SELECT left(min(id), -26) FROM workflow.workflow_events
  UNION ALL
    SELECT (SELECT left(min(e.id), -26) FROM workflow.workflow_events e WHERE e.id > p.pre || %(top)s)
    FROM prefixes p WHERE p.pre IS NOT NULL
), scan AS MATERIALIZED (
    SELECT e.id, e.run_id, e.created_at FROM prefixes p
    JOIN LATERAL (
        SELECT id, run_id, created_at FROM workflow.workflow_events
        WHERE id >= p.pre || %(floor)s AND id <= p.pre || %(top)s
    ) e ON true
    WHERE p.pre IS NOT NULL
)
SELECT pg_current_snapshot()::text AS snap,
       (extract(epoch FROM statement_timestamp()) * 1000)::bigint AS now_ms,
       w.id, w.run_id, (extract(epoch FROM w.created_at) * 1000)::bigint AS created_ms
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT id, run_id, created_at FROM scan WHERE NOT %(grouped)s OR right(id, 26) >= %(keep)s
  UNION ALL
    SELECT min(id), run_id, NULL FROM scan WHERE %(grouped)s GROUP BY run_id
) w ON true
"""

#: every run, for a feed with no token: the runs table, not the distinct run ids of the events (the
#: world writes a run and its ``run_created`` event in one transaction, so the two are the same
#: runs; the distinct ids cost 0.8 s of a first pass over 10^6 events, before any run was read)
_ALL_SQL = """
SELECT pg_current_snapshot()::text AS snap,
       (extract(epoch FROM statement_timestamp()) * 1000)::bigint AS now_ms, r.run_id
FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT id AS run_id FROM workflow.workflow_runs) r ON true
"""


def _ulid_at(ms: int) -> str:
    """The smallest ULID of millisecond ``ms``."""
    return str(ULID.from_int(max(0, ms) << 80))


def _ulid_ms(event_id: str) -> int | None:
    try:
        return ULID.from_str(event_id[-26:]).milliseconds
    except ValueError:
        return None


def _running(snapshot: str) -> list[int]:
    """The in-progress transaction ids of a ``pg_snapshot`` (``xmin:xmax:xip,…``)."""
    parts = snapshot.split(":")
    return [int(x) for x in parts[2].split(",") if x] if len(parts) == 3 else []


@dataclass
class _FeedToken:
    at_ms: int  # the server's time at the pass that handed the token out
    pins: dict[int, int]  # transaction id still running then → time floor (ms) it holds the window at

    def floor(self, window_ms: int, max_ms: int) -> int:
        floor = min([self.at_ms - window_ms, *self.pins.values()])
        return max(floor, self.at_ms - max_ms)

    def dump(self) -> str:
        return json.dumps({"v": 1, "at": self.at_ms, "pins": {str(k): v for k, v in self.pins.items()}})

    @classmethod
    def load(cls, token: str) -> _FeedToken | None:
        try:
            data = json.loads(token)
            if data.get("v") != 1:
                return None
            return cls(int(data["at"]), {int(k): int(v) for k, v in data.get("pins", {}).items()})
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class _Feed:
    """The change feed of world-postgres: new events found from a watermark, not by aggregating.

    Event ids are ULIDs minted by the SDK processes, and ``created_at`` is each transaction's
    start: neither is commit order, and there is no index on ``created_at``. So a pass scans the
    primary key from a *time floor* (under each id prefix) and reports the ids it had not seen:

    * Concurrent writers: a transaction still running at a pass (in the snapshot's ``xip``) pins
      the floor where it was when the transaction was first seen running, until it ends; so an
      event it commits late, with an id below ids already reported, is still in the next scan.
      (Pins older than ``max_lookback`` are let go, with a warning: the scan stays bounded.)
    * Transactions that start after a pass mint ids from then on: the next floor is the server
      time of the pass less ``window``, which also absorbs writers' clocks running behind the
      database's by up to ``window`` (a writer seen further behind is reported once).
    * Ids under the floor already reported are remembered for the token they were handed out
      with, so a pass reports each event's run once; a caller retrying with an older token (a
      failed delivery, a restart) gets every run with events in the window again.

    The token is ``{"v": 1, "at": <server ms>, "pins": {xid: floor ms}}``; a pass costs the
    events of the last ``window`` seconds (none when idle), whatever the history.
    """

    def __init__(self, world: PostgresWorld, window: float, max_lookback: float) -> None:
        self.w = world
        self.window_ms = int(window * 1000)
        self.max_ms = int(max_lookback * 1000)
        self._memo: tuple[str, set[str]] | None = None
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    async def changes(self, token: str | None) -> Changes:
        state = _FeedToken.load(token) if token is not None else None
        if token is not None and state is None:
            self._warn_once("token", "postgres world: change token %.40r is not ours; starting from every run", token)
        if state is None:
            rows = await self.w.query(_ALL_SQL)
            now = int(rows[0]["now_ms"])
            unknown = dict.fromkeys(_running(rows[0]["snap"]), now - self.max_ms)  # their start is unknown
            fresh = _FeedToken(now, unknown).dump()
            self._memo = None
            return Changes(runs=sorted({r["run_id"] for r in rows if r["run_id"] is not None}), token=fresh)
        floor = state.floor(self.window_ms, self.max_ms)
        remembered = self._memo is not None and self._memo[0] == token
        seen = self._memo[1] if self._memo is not None and remembered else set()
        # with nothing remembered (a restart, a retried token) every run in the window is new: one
        # row per run, plus the events of about the next window, to remember for the next pass
        keep = max(floor, int(time.time() * 1000) - self.window_ms - _KEEP_MARGIN_MS)
        rows = await self.w.query(
            _WINDOW_SQL,
            {"floor": _ulid_at(floor), "top": _ULID_TOP, "grouped": not remembered, "keep": _ulid_at(keep)},
        )
        now = int(rows[0]["now_ms"])
        since: dict[str, str] = {}
        lag = 0
        for row in rows:
            event_id = row["id"]
            if event_id is None:
                continue
            minted = _ulid_ms(event_id)
            if minted is not None and row["created_ms"] is not None:
                lag = max(lag, int(row["created_ms"]) - minted)
            if event_id not in seen:
                run_id = row["run_id"]
                if run_id not in since or event_id < since[run_id]:
                    since[run_id] = event_id
        if lag * 2 > self.window_ms:
            self._warn_once(
                "skew",
                "postgres world: an SDK process mints event ids %.1f s behind the database clock; the change"
                " feed looks back %.1f s, so raise its window if events go missing",
                lag / 1000,
                self.window_ms / 1000,
            )
        pins: dict[int, int] = {}
        for xid in _running(rows[0]["snap"]):
            pin = state.pins.get(xid, floor)
            if pin < now - self.max_ms:
                self._warn_once(
                    f"xid{xid}",
                    "postgres world: transaction %d has been open over %.0f s; the change feed stops waiting for it",
                    xid,
                    self.max_ms / 1000,
                )
                pin = now - self.max_ms
            pins[xid] = pin
        next_state = _FeedToken(now, pins)
        fresh = next_state.dump()
        keep_from = _ulid_at(next_state.floor(self.window_ms, self.max_ms))
        self._memo = (fresh, {r["id"] for r in rows if r["id"] is not None and r["id"][-26:] >= keep_from})
        return Changes(runs=sorted(since), token=fresh, since=since)


class _Runs:
    def __init__(self, world: PostgresWorld) -> None:
        self.w = world

    async def get(self, run_id: str, *, resolve_data: str = "all") -> WorkflowRun:
        rows = await self.w.query(f"SELECT {_RUN_COLUMNS} FROM workflow.workflow_runs WHERE id = %s", [run_id])
        if not rows:
            raise WorkflowRunNotFoundError(run_id)
        return records.run_from(_run_record(rows[0]), resolve_data == "all")

    async def id_page(self, before: str | None, limit: int) -> builtins.list[str]:
        """Up to ``limit`` run ids, newest first, below ``before`` (every run from the newest for
        None): one index-only range scan, for a lister that hands runs to other processes, which
        read them (``entries``) instead of having them read here and shipped."""
        rows = await self.w.query_tuples(
            "SELECT id FROM workflow.workflow_runs WHERE (%s::text IS NULL OR id < %s) ORDER BY id DESC LIMIT %s",
            [before, before, limit],
        )
        return [row[0] for row in rows]

    async def entries(self, run_ids: Sequence[str]) -> dict[str, WorkflowRun]:
        """The runs of ``run_ids`` still there, by id, as ``list(resolve_data="none")`` lists them:
        one statement for a chunk of runs (``id_page``)."""
        rows = await self.w.query(
            f"SELECT {_RUN_COLUMNS_BARE} FROM workflow.workflow_runs WHERE id = ANY(%s::text[])",
            [builtins.list(run_ids)],
        )
        return {row["id"]: records.run_from(_run_record(row), False) for row in rows}

    async def list(
        self,
        *,
        workflow_name: str | None = None,
        status: str | None = None,
        pagination: Pagination | None = None,
        resolve_data: str = "all",
    ) -> Page[WorkflowRun]:
        """Newest first, keyset-paged on the run id (the primary key; ids are ULIDs, so this is
        creation order), as world-postgres itself lists runs: each page is one index range scan."""
        p = pagination or Pagination()
        order = "asc" if p.sort_order == "asc" else "desc"
        limit = p.limit or 20
        where, params = "true", []
        if p.cursor:
            where = f"id {'<' if order == 'desc' else '>'} %s"
            params = [p.cursor.rsplit("|", 1)[-1]]  # also an older "<createdAt>|<id>" cursor
        columns = _RUN_COLUMNS if resolve_data == "all" else _RUN_COLUMNS_BARE
        rows = await self.w.query(
            f"SELECT {columns} FROM workflow.workflow_runs WHERE {where}"
            " AND (%s::text IS NULL OR name = %s) AND (%s::text IS NULL OR status::text = %s)"
            f" ORDER BY id {order} LIMIT %s",
            [*params, workflow_name, workflow_name, status, status, limit + 1],
        )
        runs = [records.run_from(_run_record(r), resolve_data == "all") for r in rows]
        return _page(runs, limit, lambda run: run.run_id)


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
            f"SELECT {_STEP_COLUMNS} FROM workflow.workflow_steps WHERE run_id = %s AND {where}"
            f" ORDER BY step_id {order} LIMIT %s",
            [run_id, *params, limit + 1],
        )
        return _page(
            [records.step_from(_step_record(r), resolve_data == "all") for r in rows], limit, lambda s: s.step_id
        )


_EVENT_COLUMNS = "id, type, correlation_id, created_at, run_id, payload, payload_cbor, spec_version"
_EVENT_COLUMNS_E = ", ".join(f"e.{c.strip()}" for c in _EVENT_COLUMNS.split(","))


class _Wakeups:
    """Notifications that the world is being written, so a follower reads within milliseconds
    instead of at its next poll.

    world-postgres's queue is graphile-worker, which NOTIFYs ``jobs:insert`` for every job it
    adds, and the SDK adds one right after each step's ``step_completed`` (the workflow's
    continuation), at a run's start, after each replay that schedules steps, a sleep or a hook
    resumption. A dedicated connection LISTENs on it. The notification is only a hint (graphile's
    channel, not a promise of the world's): a follower still polls the change feed, and without
    notifications (the connection failed, a queue that does not notify) ``wait`` is a sleep. A
    failed connection is retried every ``RETRY`` seconds, quietly: the feed's own queries say
    when the database is down.
    """

    CHANNELS = ("jobs:insert",)
    RETRY = 5.0

    def __init__(self, world: PostgresWorld) -> None:
        self.w = world
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._retry_at = 0.0
        #: notifications received (each wakes a waiting follower)
        self.received = 0

    async def _listening(self) -> psycopg.AsyncConnection[Any] | None:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._retry_at:
            return None
        try:
            conn = await psycopg.AsyncConnection.connect(self.w.url, autocommit=True)
            for channel in self.CHANNELS:
                await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
        except psycopg.Error:  # its words may quote the URL: nothing logged here (queries report the outage)
            self._retry_at = time.monotonic() + self.RETRY
            return None
        self._conn = conn
        return conn

    async def wait(self, timeout: float) -> bool:
        conn = await self._listening()
        if conn is None:
            await asyncio.sleep(timeout)
            return False
        woken = False
        try:
            async for _ in conn.notifies(timeout=max(0.0, timeout), stop_after=1):
                woken = True  # the whole packet is taken: a burst wakes one pass, not one per job
        except psycopg.Error:
            await self.close()
            self._retry_at = time.monotonic() + self.RETRY
        if woken:
            self.received += 1
        return woken

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # already broken
                pass


class _Events:
    def __init__(self, world: PostgresWorld) -> None:
        self.w = world

    async def counts_by_run(self) -> dict[str, int]:
        """Events stored per run (a scan of every event: for tools, never per tailer pass)."""
        rows = await self.w.query("SELECT run_id, count(*) AS n FROM workflow.workflow_events GROUP BY run_id")
        return {r["run_id"]: int(r["n"]) for r in rows}

    async def changes(self, token: str | None) -> Changes:
        """Runs whose log grew since ``token`` (``None``: every run).

        Cost is the events of the last ``window`` seconds, not the history: one statement takes
        PostgreSQL's snapshot, the server time and the event ids above a watermark, an index range
        scan of the primary key per id prefix. See ``_Feed`` for why nothing committed late is lost.
        """
        return await self.w.feed.changes(token)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a sign that a log may have grown (``_Wakeups``):
        True when one came. A follower polls ``changes`` when it does, and anyway between waits."""
        return await self.w.wakeups.wait(timeout)

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
            f"SELECT {_EVENT_COLUMNS} FROM workflow.workflow_events WHERE run_id = %s AND {where}"
            f" ORDER BY id {order} LIMIT %s",
            [run_id, *params, limit + 1],
        )
        return _page(
            [records.event_from(_event_record(r), resolve_data == "all") for r in rows], limit, lambda e: e.event_id
        )

    async def logs(
        self,
        after: Mapping[str, str | None],
        *,
        resolve_data: str = "all",
        page_size: int = 5000,
        around: Around | None = None,
    ) -> AsyncIterator[tuple[str, builtins.list[Event]]]:
        """Many runs' logs at once: each run of ``after`` (in run-id order) with its events after
        the id given (the whole log for ``None``), oldest first.

        A follower catching up on many runs, or a pass over every run that changed, reads them
        with one statement per ``page_size`` events (an index probe per run, keyset over
        (run id, event id)) instead of one per run: the round trips were most of its cost. Each
        statement goes through ``around`` (``traced``: a ``world.events.list`` span each)."""
        cursors = dict(after)
        pending = sorted(cursors)
        held: dict[str, builtins.list[Event]] = {}
        resolve = resolve_data == "all"
        while pending:
            query = self.w.query_tuples(
                f"SELECT {_EVENT_COLUMNS_E} FROM unnest(%s::text[], %s::text[]) AS c(run_id, after)"
                " CROSS JOIN LATERAL (SELECT * FROM workflow.workflow_events e"
                " WHERE e.run_id = c.run_id AND (c.after IS NULL OR e.id > c.after)) e"
                ' ORDER BY e.run_id COLLATE "C", e.id LIMIT %s',  # run ids in the order Python compares them
                [pending, [cursors[r] for r in pending], page_size + 1],
                binary=True,
            )
            rows = await (query if around is None else around(query, pending[0] if len(pending) == 1 else None))
            more = len(rows) > page_size
            rows = rows[:page_size]
            log: builtins.list[Event] = []
            log_of = ""
            for row in rows:
                if row[4] != log_of:  # rows come run by run
                    log_of = row[4]
                    log = held.setdefault(log_of, [])
                log.append(_event_from_row(row, resolve))
            if more:  # the last run of the page may go on: resume inside it
                last = rows[-1]
                cursors[last[4]] = last[0]
                done = [r for r in pending if r < last[4]]
                pending = pending[len(done) :]
            else:
                done, pending = pending, []
            for run_id in done:
                yield run_id, held.pop(run_id, [])

    async def list_by_correlation_id(
        self,
        *,
        correlation_id: str,
        run_id: str | None = None,
        pagination: Pagination | None = None,
        resolve_data: str = "all",
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

    async def create(self, run_id: str | None, event: EventRequest) -> EventResult:
        raise WorkflowWorldError(
            "PostgresWorld reads the event log; creating events is the SDK's job", code="UNSUPPORTED"
        )


_HOOK_COLUMNS = (
    "run_id, hook_id, token, owner_id, project_id, environment, created_at, metadata, metadata_cbor, spec_version,"
    " is_webhook"
)


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
            "SELECT wait_id, run_id, status, resume_at, completed_at, created_at, updated_at"
            " FROM workflow.workflow_waits WHERE (%s::text IS NULL OR run_id = %s) ORDER BY wait_id",
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
            "INSERT INTO workflow.workflow_stream_chunks (id, stream_id, run_id, data, created_at, eof)"
            " VALUES (%s, %s, %s, %s, now(), %s)",
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

    async def read_all(self, name: str) -> tuple[builtins.list[bytes], bool, int]:
        """(chunks before the first EOF, whether EOF was seen, rows stored after EOF)."""
        rows = await self.w.query(
            "SELECT data, eof FROM workflow.workflow_stream_chunks WHERE stream_id = %s ORDER BY id", [name]
        )
        chunks: builtins.list[bytes] = []
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
