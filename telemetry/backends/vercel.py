"""``VercelWorld``: a deployment's runs read from the Vercel workflow server, as world-vercel 4.7 reads them.

Routes (``@workflow/world-vercel`` 4.7.4; ``<base>`` is the direct server ``…/api`` or the API proxy,
see :mod:`.vercel_http`):

=========================  ===============================================================
runs                       ``GET /v2/runs`` (``workflowName``, ``status``, ``limit``, ``cursor``,
                           ``sortOrder``, ``remoteRefBehavior``), ``GET /v2/runs/<id>``
steps                      ``GET /v2/runs/<id>/steps``, ``GET /v2/runs/<id>/steps/<step>``, ``/v2/steps/<step>``
events                     ``GET /v4/runs/<id>/events`` (frames), ``GET /v4/runs/<id>/events/<event>``,
                           ``GET /v4/events?correlationId=…``
hooks                      ``GET /v2/hooks``, ``GET /v2/hooks/<id>``, ``GET /v2/hooks/by-token?token=…``
streams                    ``GET /v2/runs/<id>/streams`` (names), ``…/streams/<name>/chunks``, ``…/info``,
                           ``PUT /v2/runs/<id>/stream/<name>`` (append, batch, close), ``GET /v2/stream/<name>``
=========================  ===============================================================

Bodies are CBOR; payloads (``input``, ``output``, ``result``, hook ``metadata``/``payload``) arrive
as the SDK's format-prefixed bytes and are decoded as the other worlds decode theirs. ``encr``
payloads are opened when the deployment's key is configured (``VERCEL_DEPLOYMENT_KEY``, with
the project id), as ``@workflow/core``'s ``maybeDecrypt`` does with the key world-vercel derives;
otherwise, or when the key does not open them, they stay :class:`~telemetry.payloads.Encrypted`.

**Event cursors are event ids.** The server's cursors are opaque, but the readers of this
package resume a run's log from the last event id they read (``wft follow`` keeps it in its
checkpoint). So a page's ``cursor`` is its last event id, and each server cursor seen is kept
against the event id it resumes after: resuming after an id starts from the closest such
cursor at or before it and skips what is at or before the id. Re-reading a run costs at most
one page beyond what is new.

**Change feed** (``events.changes``): the server has no "events since" query, so the feed lists
the runs that can still change (``status=pending`` and ``status=running``), the runs created
since the previous token (newest first, down to the token's watermark less ``rewind``, so a run
that becomes visible late is not missed), and the runs that were live at the previous token (so
one that finished in between is read once more). A pass costs three list calls plus a page per
200 live or new runs, not the history; the token carries the live run ids and those created in
the rewind window (already reported, so listing them again is no news).

**Live runs are read at their own pace** (:class:`LivePace`). A live run's log can only be read
run by run, so a follower that read every live run's tail on every pass would ask a deployment
with 2,000 runs waiting on hooks for 1,000 logs a second, nearly all of them empty. A run whose
log had nothing new is reported again after ``IDLE_READ_FIRST`` seconds, then twice as long each
time it has nothing new, up to ``IDLE_READ_MAX``; a run whose log grew is reported on every pass;
a pending sleep brings the next read forward to its ``resumeAt``; a run that finishes is reported
on the next pass whatever its pace (its status is listed every pass). So a run that wakes after a
quiet spell is seen at most about as late as it was quiet, never later than ``IDLE_READ_MAX``.

Read-only but for streams: events cannot be created through this reader; a stream can be
written (:meth:`_Streams.write_values` serializes and frames values as the SDK does, encrypted
when the deployment key is known) because ``StreamWriter`` writes through the world.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import time
from bisect import bisect_right, insort
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

from ..errors import HookNotFoundError, WorkflowRunNotFoundError, WorkflowWorldError
from ..payloads import Encrypted, Opaque, decode_payload
from ..stream_format import VERCEL_DONE_HEADER, VERCEL_MULTI_HEADER, StreamDecoder, encode_chunk, vercel_multi_body
from ..world import (
    TERMINAL_STATUSES,
    Around,
    Changes,
    Event,
    EventRequest,
    EventResult,
    Hook,
    Page,
    Pagination,
    ResolveData,
    RunStatus,
    Step,
    StreamChunk,
    StreamChunks,
    StreamInfo,
    WorkflowRun,
)
from ..world.log import read_log
from . import records
from .vercel_http import Http, VercelConfig, decode_cbor
from .vercel_keys import DeploymentKey, RunKey

__all__ = ["LivePace", "VercelConfig", "VercelWorld"]

log = logging.getLogger("telemetry.backends.vercel")
T = TypeVar("T")

#: eventData field holding each event type's payload (``PAYLOAD_FIELD_BY_EVENT_TYPE`` in events.ts).
PAYLOAD_FIELD_BY_EVENT_TYPE = {
    "run_created": "input",
    "run_started": "input",
    "run_completed": "output",
    "run_failed": "error",
    "step_created": "input",
    "step_completed": "result",
    "step_failed": "error",
    "step_retrying": "error",
    "hook_created": "metadata",
    "hook_received": "payload",
}
#: Event types whose frame body is a CBOR StructuredError, not user bytes (``structuredErrorEventTypes``).
_STRUCTURED_ERROR_EVENTS = frozenset({"run_failed", "step_failed", "step_retrying"})
#: Chunks per stream batch PUT (the server's ``MAX_CHUNKS_PER_BATCH``).
MAX_CHUNKS_PER_REQUEST = 1000
#: A change feed re-lists runs created this long before its watermark (server clocks, late commits).
DEFAULT_REWIND = 60.0
#: Runs' logs ``events.logs`` reads at once: each is a few round trips of network latency, so one at
#: a time leaves a reader of 10^5 runs waiting hours on the network; 16 keep it busy without asking
#: a deployment's server for more than a browser would
LOGS_IN_FLIGHT = 16
_LOG_PAGE = 1000
#: a live run whose log had nothing new is read again after this many seconds, then after twice as
#: long each time it has nothing new, up to ``IDLE_READ_MAX`` (see the module doc)
IDLE_READ_FIRST = 2.0
IDLE_READ_MAX = 30.0
_LIVE_STATUSES: tuple[RunStatus, ...] = ("pending", "running")
_RUN_PAYLOADS = ("input", "output")
_TOKEN_PREFIX = "vercel:2:"


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _order(pagination: Pagination | None, default: str = "asc") -> str:
    return (pagination.sort_order if pagination and pagination.sort_order else None) or default


def _query(pagination: Pagination | None, resolve: ResolveData | None = None) -> dict[str, str | None]:
    p = pagination or Pagination()
    query: dict[str, str | None] = {
        "limit": str(p.limit) if p.limit else None,
        "cursor": p.cursor or None,
        "sortOrder": p.sort_order,
    }
    if resolve is not None:
        query["remoteRefBehavior"] = "lazy" if resolve == "none" else "resolve"
    return query


def _structured(error: Any, code: Any = None) -> dict[str, Any] | None:
    """``deserializeError`` / ``deserializeStep``: a JSON string, a map, or a plain message."""
    if error is None or error == "":
        return None
    if isinstance(error, str):
        try:
            parsed = json.loads(error)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "message" in parsed:
            error = parsed
        else:
            return {"message": error, "code": code}
    if isinstance(error, dict):
        return {
            "message": str(error.get("message", "Unknown error")),
            "stack": error.get("stack"),
            "code": code if code is not None else error.get("code"),
        }
    return {"message": str(error), "code": code}


class VercelWorld:
    """Reads a Vercel deployment's workflow runs through the workflow server's HTTP API."""

    rpc_system = "http"
    peer_service = "workflow-server"
    #: world-vercel refuses writes to a finished run itself (409), so ``StreamWriter`` need not check
    accepts_post_completion_writes = False

    def __init__(
        self,
        config: VercelConfig,
        *,
        rewind: float = DEFAULT_REWIND,
        idle_read_first: float = IDLE_READ_FIRST,
        idle_read_max: float = IDLE_READ_MAX,
    ) -> None:
        self.config = config
        self.http = Http(config)
        self.rewind = rewind
        self.pace = LivePace(idle_read_first, idle_read_max)
        self.keys: DeploymentKey | None = None
        if config.deployment_key:
            self.keys = DeploymentKey.from_base64(config.deployment_key, config.project_id or "")
        self._warned: set[str] = set()
        self.runs = _Runs(self)
        self.steps = _Steps(self)
        self.events = _Events(self)
        self.hooks = _Hooks(self)
        self.streams = _Streams(self)

    @classmethod
    def from_env(cls, *, server_url: str | None = None) -> VercelWorld:
        return cls(VercelConfig.from_env(server_url=server_url))

    def __repr__(self) -> str:
        mode = "proxy" if self.config.using_proxy else "direct"
        return f"VercelWorld({self.config.base_url!r}, {mode}, project={self.config.project_id!r})"

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, query: dict[str, str | None] | None = None) -> Any:
        response = await self.http.request("GET", path, query=query)
        return self.http.parse("GET", path, response)

    # -- payloads ------------------------------------------------------------------------------
    def run_key(self, run_id: str) -> RunKey | None:
        return self.keys.for_run(run_id) if self.keys is not None else None

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def payload(self, run_id: str, raw: Any) -> Any:
        """A stored payload as a Python value: decrypted with the run's key when there is one
        (``encr``), decoded as the other worlds decode theirs. A payload that does not open or
        parse is kept (``Encrypted``/``Opaque``) with one warning per run, and the rest reads on."""
        if not isinstance(raw, (bytes, bytearray)):
            return raw  # legacy (spec version 1) JSON payloads are values already
        data = bytes(raw)
        if data[:4] == b"encr":
            key = self.run_key(run_id)
            if key is None:
                return Encrypted(data)
            try:
                data = key.decrypt(data)
            except ValueError as error:
                self._warn_once(f"key:{run_id}", "world-vercel: run %s: payload left encrypted: %s", run_id, error)
                return Encrypted(data)
        try:
            return decode_payload(data)
        except Exception as error:  # a payload we cannot parse must not hide the run
            self._warn_once(
                f"parse:{run_id}", "world-vercel: run %s: unreadable payload kept as bytes: %s", run_id, error
            )
            return Opaque(data[:4].decode("ascii", "replace"), data)

    # -- entities ------------------------------------------------------------------------------
    def build(self, what: str, build: Callable[[], T]) -> T:
        """An entity from a server answer; a missing or mistyped field is a one-line error
        (world-vercel's ``SCHEMA_VALIDATION``), never a traceback."""
        try:
            return build()
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise WorkflowWorldError(
                f"world-vercel: {what} failed schema validation ({type(error).__name__}: {error})",
                code="SCHEMA_VALIDATION",
            ) from None

    def page(self, data: Any, build: Callable[[Any], T], what: str) -> Page[T]:
        """A ``{data, cursor, hasMore}`` answer (``PaginatedResponseSchema``) as a page of entities."""
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise WorkflowWorldError(
                f"world-vercel: {what} failed schema validation (no data list)", code="SCHEMA_VALIDATION"
            )
        cursor = data.get("cursor")
        items = data["data"]
        return Page(
            data=self.build(what, lambda: [build(d) for d in items]),
            cursor=cursor if isinstance(cursor, str) and cursor else None,
            has_more=bool(data.get("hasMore")),
        )

    def run(self, d: Any, resolve: bool) -> WorkflowRun:
        def build() -> WorkflowRun:
            wire = dict(d)
            wire["error"] = _structured(wire.get("error"), wire.pop("errorCode", None))
            run = records.run_from({k: v for k, v in wire.items() if k not in _RUN_PAYLOADS}, False)
            if resolve:
                run.input = self.payload(run.run_id, wire.get("input"))
                run.output = self.payload(run.run_id, wire.get("output"))
            return run

        return self.build("run", build)

    def step(self, d: Any, resolve: bool) -> Step:
        def build() -> Step:
            wire = dict(d)
            wire["error"] = _structured(wire.get("error") or wire.pop("errorRef", None))
            step = records.step_from({k: v for k, v in wire.items() if k not in _RUN_PAYLOADS}, False)
            if resolve:
                step.input = self.payload(step.run_id, wire.get("input"))
                step.output = self.payload(step.run_id, wire.get("output"))
            return step

        return self.build("step", build)

    def hook(self, d: Any) -> Hook:
        def build() -> Hook:
            wire = dict(d)
            hook = records.hook_from({k: v for k, v in wire.items() if k not in ("metadata", "metadataRef")}, False)
            hook.metadata = self.payload(hook.run_id, wire.get("metadata"))
            return hook

        return self.build("hook", build)

    def event(self, meta: dict[str, Any], body: bytes, resolve: bool) -> Event:
        """``buildEventFromV4``: the frame's meta is the event, its body the payload field's bytes."""

        def build() -> Event:
            event_type = str(meta["eventType"])
            run_id = str(meta["runId"])
            data = dict(meta.get("eventData") or {})
            field = PAYLOAD_FIELD_BY_EVENT_TYPE.get(event_type)
            value: Any = None
            if field is not None:
                if event_type in _STRUCTURED_ERROR_EVENTS:
                    if body:
                        try:
                            data[field] = decode_cbor(body)
                        except Exception:  # not CBOR: keep the bytes, as the SDK does
                            data[field] = body
                elif body:
                    value = self.payload(run_id, body) if resolve else None
                    data.pop(field, None)
                elif isinstance(data.get(field), (bytes, bytearray)):
                    value = self.payload(run_id, data.pop(field)) if resolve else None
                else:
                    data.pop(field, None)  # a ref descriptor (lazy listing), not the payload
            wire = {
                "runId": run_id,
                "eventId": meta["eventId"],
                "eventType": event_type,
                "createdAt": meta["createdAt"],
                "correlationId": meta.get("correlationId"),
                "eventData": data or None,
                "specVersion": meta.get("specVersion"),
            }
            event = records.event_from(wire, resolve)
            if field is not None and field not in data and (value is not None or body):
                event.event_data = {**(event.event_data or {}), field: value}
            return event

        return self.build("event", build)


class _Runs:
    def __init__(self, world: VercelWorld) -> None:
        self.w = world

    async def get(self, run_id: str, *, resolve_data: ResolveData = "all") -> WorkflowRun:
        try:
            data = await self.w.get(f"/v2/runs/{_q(run_id)}", _query(None, resolve_data))
        except WorkflowWorldError as error:
            if error.status == 404:
                raise WorkflowRunNotFoundError(run_id) from None
            raise
        return self.w.run(data, resolve_data == "all")

    async def list(
        self,
        *,
        workflow_name: str | None = None,
        status: RunStatus | None = None,
        pagination: Pagination | None = None,
        resolve_data: ResolveData = "all",
    ) -> Page[WorkflowRun]:
        query = {"workflowName": workflow_name, "status": status, **_query(pagination, resolve_data)}
        data = await self.w.get("/v2/runs", query)
        resolve = resolve_data == "all"
        return self.w.page(data, lambda d: self.w.run(d, resolve), "runs list")


class _Steps:
    def __init__(self, world: VercelWorld) -> None:
        self.w = world

    async def get(self, run_id: str | None, step_id: str, *, resolve_data: ResolveData = "all") -> Step:
        path = f"/v2/runs/{_q(run_id)}/steps/{_q(step_id)}" if run_id else f"/v2/steps/{_q(step_id)}"
        return self.w.step(await self.w.get(path, _query(None, resolve_data)), resolve_data == "all")

    async def list(
        self, *, run_id: str, pagination: Pagination | None = None, resolve_data: ResolveData = "all"
    ) -> Page[Step]:
        data = await self.w.get(f"/v2/runs/{_q(run_id)}/steps", _query(pagination, resolve_data))
        resolve = resolve_data == "all"
        return self.w.page(data, lambda d: self.w.step(d, resolve), "steps list")


class _Resume:
    """Per run and order, the server cursors seen, keyed by the event id each resumes after."""

    def __init__(self, runs: int = 4096, per_run: int = 4096) -> None:
        self._runs: OrderedDict[tuple[str, str], tuple[list[str], dict[str, str]]] = OrderedDict()
        self._limit = runs
        self._per_run = per_run

    def _entry(self, run_id: str, order: str) -> tuple[list[str], dict[str, str]]:
        key = (run_id, order)
        found = self._runs.get(key)
        if found is None:
            found = ([], {})
            self._runs[key] = found
            if len(self._runs) > self._limit:
                self._runs.popitem(last=False)
        else:
            self._runs.move_to_end(key)
        return found

    def remember(self, run_id: str, order: str, after: str, cursor: str) -> None:
        ids, cursors = self._entry(run_id, order)
        if after not in cursors:
            key = after if order == "asc" else _invert(after)
            insort(ids, key)
            if len(ids) > self._per_run:
                dropped = ids.pop(0)
                cursors.pop(dropped if order == "asc" else _invert(dropped), None)
        cursors[after] = cursor

    def closest(self, run_id: str, order: str, after: str) -> tuple[str | None, str | None]:
        """(event id, server cursor) to resume from for "after ``after``" (None, None: from the start)."""
        ids, cursors = self._entry(run_id, order)
        key = after if order == "asc" else _invert(after)
        at = bisect_right(ids, key) - 1
        if at < 0:
            return None, None
        found = ids[at] if order == "asc" else _invert(ids[at])
        return found, cursors[found]

    def forget(self, run_id: str, order: str) -> None:
        self._runs.pop((run_id, order), None)


class LivePace:
    """When the change feed reports a live run again: on every pass while its log grows, after
    ``first`` seconds once a read of its tail found nothing new, then twice as long each time, up to
    ``most``; a pending sleep's ``resumeAt`` brings the next read forward (see the module doc).

    It learns from the reads themselves (``read``), so whoever reads a run's tail through this
    world (a follower's pass, a run page) sets its pace. State is in memory and kept only for the
    runs the last change feed listed as live (``keep``): reads of any other run (``wft export`` of
    10^5 finished runs) cost nothing here and hold nothing. A restarted reader reads every live run
    once, then finds its pace again."""

    def __init__(self, first: float, most: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.first = first
        self.most = most
        self.clock = clock
        self._next: dict[str, tuple[float, float]] = {}  # run → (when it is due, the interval that made it so)
        self._sleeps: dict[str, dict[str, float]] = {}  # run → its pending sleeps' wake times (``clock``'s time)
        self._newest: dict[str, str] = {}  # run → the newest event id read
        self._live: set[str] = set()  # the runs the last change feed listed as live: the only ones paced

    def __len__(self) -> int:
        """How many runs it holds state for (at most the live ones)."""
        return len(self._newest.keys() | self._next.keys() | self._sleeps.keys())

    def read(self, run_id: str, events: Sequence[Event], *, to_the_end: bool) -> None:
        """A read of ``run_id``'s log, oldest first; ``to_the_end``: nothing lies after its last event.
        It grew if it holds an event id newer than the newest read before: readers resume a little
        before what they have (a follower looks back for late commits), so a read that returns
        events need not have found anything new. Only a read to the end says there is nothing new
        (a page short of it, the first event say, says nothing of the tail)."""
        if run_id not in self._live:
            return
        newest = max((e.event_id for e in events), default=None)
        self._note_sleeps(run_id, events)
        known = self._newest.get(run_id)
        if newest is not None and (known is None or newest > known):
            self._newest[run_id] = newest
            self._next.pop(run_id, None)
            return
        if not to_the_end:
            return
        now = self.clock()
        interval = min(self.most, self._next[run_id][1] * 2) if run_id in self._next else min(self.first, self.most)
        due = now + interval
        wakes = [at for at in self._sleeps.get(run_id, {}).values() if at > now]  # one overdue: the pace as usual
        if wakes:
            due = min(due, min(wakes))
        self._next[run_id] = (due, interval)

    def _note_sleeps(self, run_id: str, events: Sequence[Event]) -> None:
        wakes = self._sleeps.get(run_id, {})
        now, wall = self.clock(), datetime.now(UTC)
        for event in events:
            wait = event.correlation_id or ""
            if event.event_type == "wait_created":
                resume_at = (event.event_data or {}).get("resumeAt")
                if isinstance(resume_at, datetime):
                    wakes[wait] = now + (resume_at - wall).total_seconds()
            elif event.event_type == "wait_completed":
                wakes.pop(wait, None)
        if wakes:
            self._sleeps[run_id] = wakes
        else:
            self._sleeps.pop(run_id, None)

    def due(self, run_id: str, now: float | None = None) -> bool:
        """Whether ``run_id`` (live) is to be read on this pass."""
        entry = self._next.get(run_id)
        return entry is None or entry[0] <= (self.clock() if now is None else now)

    def keep(self, live: Iterable[str]) -> None:
        """Pace these runs (the live ones) and forget every other: a finished run is read once more
        regardless."""
        self._live = set(live)
        for table in (self._next, self._sleeps, self._newest):
            for run_id in [r for r in table if r not in self._live]:
                del table[run_id]


def _invert(event_id: str) -> str:
    """A key that sorts descending ids ascending (for the ``desc`` order's resume table)."""
    return "".join(chr(0x10FFFF - ord(c)) for c in event_id)


class _Events:
    def __init__(self, world: VercelWorld) -> None:
        self.w = world
        self.resume = _Resume()

    async def _page(
        self, path: str, query: dict[str, str | None], resolve: bool
    ) -> tuple[builtins.list[Event], str | None]:
        events: list[Event] = []
        next_cursor: str | None = None
        ended = False
        async for meta, body in self.w.http.frames(path, query):
            if meta.get("_end") == 1:
                next_cursor = meta.get("next") if isinstance(meta.get("next"), str) else None
                ended = True
                break
            events.append(self.w.event(meta, body, resolve))
        if not ended:
            raise WorkflowWorldError(
                f"GET {path}: the frame stream ended without its end sentinel ({len(events)} events read): "
                "truncated response",
                code="PARSE_ERROR",
            )
        return events, next_cursor

    async def list(
        self, *, run_id: str, pagination: Pagination | None = None, resolve_data: ResolveData = "all"
    ) -> Page[Event]:
        """A page of the run's log after the event id ``pagination.cursor`` (see the module doc)."""
        p = pagination or Pagination()
        order = _order(p)
        limit = p.limit or 100
        after = p.cursor
        _, server_cursor = self.resume.closest(run_id, order, after) if after else (None, None)
        path = f"/v4/runs/{_q(run_id)}/events"
        resolve = resolve_data == "all"
        out: list[Event] = []
        has_more = False
        retried = False
        while True:
            query = {
                "cursor": server_cursor,
                "limit": str(limit),
                "sortOrder": order,
                "remoteRefBehavior": "resolve" if resolve else "lazy",
            }
            try:
                events, next_cursor = await self._page(path, query, resolve)
            except WorkflowWorldError as error:
                if server_cursor is not None and error.status == 400 and not retried:
                    retried = True  # the server no longer takes a cursor it gave: start over, skip by id
                    self.resume.forget(run_id, order)
                    server_cursor = None
                    continue
                raise
            if events and next_cursor:
                self.resume.remember(run_id, order, events[-1].event_id, next_cursor)
            if after is not None:  # what lies between the cursor we resumed from and ``after``
                events = [e for e in events if (e.event_id > after if order == "asc" else e.event_id < after)]
            room = limit - len(out)
            out.extend(events[:room])
            if len(events) > room or (next_cursor and len(out) >= limit):
                has_more = True
                break
            if not next_cursor or next_cursor == server_cursor:
                break
            server_cursor = next_cursor
        if order == "asc":
            self.w.pace.read(run_id, out, to_the_end=not has_more)
        cursor = out[-1].event_id if out and has_more else None
        return Page(data=out, cursor=cursor, has_more=has_more)

    async def logs(
        self,
        after: Mapping[str, str | None],
        *,
        resolve_data: ResolveData = "all",
        in_flight: int = LOGS_IN_FLIGHT,
        around: Around | None = None,
    ) -> AsyncIterator[tuple[str, builtins.list[Event]]]:
        """Many runs' logs, ``in_flight`` read at once: each run of ``after`` with its events after the
        id given (the whole log for ``None``), oldest first, in the order the reads finish.

        The readers that take many runs (``wft export``, a follower's first pass and its passes over
        what changed) ask for logs this way, as they do world-postgres for one statement per many
        runs: here the cost of a run is round trips, and reading one run at a time waits them out
        one after another. The first read that fails stops the rest and raises, as reading them in
        turn would; so does leaving the loop early (nothing is left running). Each page read goes
        through ``around`` (``traced``: a ``world.events.list`` span each, as a traced ``list`` makes)."""
        todo = iter(after.items())
        running: dict[asyncio.Task[builtins.list[Event]], str] = {}

        def start() -> None:
            for run_id, since in todo:
                log = read_log(self, run_id, after=since, page_size=_LOG_PAGE, resolve_data=resolve_data, around=around)
                running[asyncio.ensure_future(log)] = run_id
                if len(running) >= max(1, in_flight):
                    return

        try:
            start()
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=running.__getitem__):  # a stable order for equal finishes
                    run_id = running.pop(task)
                    events = task.result()  # the first failure raises here; ``finally`` stops the rest
                    yield run_id, events
                start()
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def get(self, run_id: str, event_id: str, *, resolve_data: ResolveData = "all") -> Event:
        path = f"/v4/runs/{_q(run_id)}/events/{_q(event_id)}"
        async for meta, body in self.w.http.frames(path):
            return self.w.event(meta, body, resolve_data == "all")
        raise WorkflowWorldError(f"GET {path}: empty frame stream", code="PARSE_ERROR")

    async def list_by_correlation_id(
        self,
        *,
        correlation_id: str,
        run_id: str | None = None,
        pagination: Pagination | None = None,
        resolve_data: ResolveData = "all",
    ) -> Page[Event]:
        query = {"correlationId": correlation_id, "runId": run_id, **_query(pagination, resolve_data)}
        events, next_cursor = await self._page("/v4/events", query, resolve_data == "all")
        if run_id is not None:  # older servers ignore runId (events.ts keeps the same guard)
            events = [e for e in events if e.run_id == run_id]
        return Page(data=events, cursor=next_cursor, has_more=bool(next_cursor))

    async def create(self, run_id: str | None, event: EventRequest) -> EventResult:
        raise WorkflowWorldError(
            "VercelWorld reads the event log; creating events is the SDK's job", code="UNSUPPORTED"
        )

    async def changes(self, token: str | None) -> Changes:
        """Runs whose log may have grown since ``token`` (see the module doc for what it costs)."""
        state = _FeedToken.parse(token)
        runs: set[str] = set()
        live: set[str] = set()
        newest = state.watermark
        floor = newest - timedelta(seconds=self.w.rewind) if newest is not None else None
        recent: dict[str, datetime] = {}
        cursor: str | None = None
        while True:  # newest first, down to the watermark less the rewind (everything the first time)
            page = await self.w.runs.list(
                pagination=Pagination(limit=200, cursor=cursor, sort_order="desc"), resolve_data="none"
            )
            stop = False
            for run in page.data:
                if floor is not None and run.created_at < floor:
                    stop = True
                    break
                if run.run_id not in state.recent:  # a run the previous pass already reported is no news
                    runs.add(run.run_id)
                if run.status not in TERMINAL_STATUSES:
                    live.add(run.run_id)
                recent[run.run_id] = run.created_at
                if newest is None or run.created_at > newest:
                    newest = run.created_at
            if stop or not page.has_more or not page.cursor:
                break
            cursor = page.cursor
        if state.watermark is not None:
            for status in _LIVE_STATUSES:
                cursor = None
                while True:
                    page = await self.w.runs.list(
                        status=status, pagination=Pagination(limit=200, cursor=cursor), resolve_data="none"
                    )
                    for run in page.data:
                        live.add(run.run_id)
                    if not page.has_more or not page.cursor:
                        break
                    cursor = page.cursor
        pace = self.w.pace
        pace.keep(live)
        now = pace.clock()
        runs.update(r for r in state.live if r not in live)  # finished since the last pass: read once more
        runs.update(r for r in live if pace.due(r, now))
        keep_after = newest - timedelta(seconds=self.w.rewind) if newest is not None else None
        window = {r for r, at in recent.items() if keep_after is not None and at >= keep_after}
        return Changes(runs=sorted(runs), token=_FeedToken(newest, live, window).dump())


class _FeedToken:
    """The change feed's position: the newest run's ``createdAt``, the runs live then, and the runs
    created within the rewind window before it (already reported, so re-listing them is no news)."""

    __slots__ = ("watermark", "live", "recent")

    def __init__(self, watermark: datetime | None, live: Iterable[str], recent: Iterable[str]) -> None:
        self.watermark = watermark
        self.live = set(live)
        self.recent = set(recent)

    def dump(self) -> str:
        stamp = self.watermark.astimezone(UTC).isoformat(timespec="microseconds") if self.watermark else ""
        return f"{_TOKEN_PREFIX}{stamp}|{','.join(sorted(self.live))}|{','.join(sorted(self.recent))}"

    @classmethod
    def parse(cls, token: str | None) -> _FeedToken:
        """An unknown or broken token means "from the beginning"."""
        empty = cls(None, (), ())
        if not token or not token.startswith(_TOKEN_PREFIX):
            return empty
        parts = token[len(_TOKEN_PREFIX) :].split("|")
        if len(parts) != 3:
            return empty
        try:
            watermark = datetime.fromisoformat(parts[0]) if parts[0] else None
        except ValueError:
            return empty
        return cls(watermark, (r for r in parts[1].split(",") if r), (r for r in parts[2].split(",") if r))


class _Hooks:
    def __init__(self, world: VercelWorld) -> None:
        self.w = world

    async def get(self, hook_id: str) -> Hook:
        try:
            return self.w.hook(await self.w.get(f"/v2/hooks/{_q(hook_id)}"))
        except WorkflowWorldError as error:
            if error.status == 404:
                raise HookNotFoundError(hook_id) from None
            raise

    async def get_by_token(self, token: str) -> Hook:
        try:
            return self.w.hook(await self.w.get("/v2/hooks/by-token", {"token": token}))
        except WorkflowWorldError as error:
            if error.status == 404:
                raise HookNotFoundError(token) from None
            raise

    async def list(self, *, run_id: str | None = None, pagination: Pagination | None = None) -> Page[Hook]:
        data = await self.w.get("/v2/hooks", {**_query(pagination, "all"), "runId": run_id})
        return self.w.page(data, self.w.hook, "hooks list")


class _Streams:
    """A run's streams: snapshot reads (``getStreamChunks``), the live read, and writes."""

    def __init__(self, world: VercelWorld) -> None:
        self.w = world

    @staticmethod
    def _path(name: str, run_id: str) -> str:
        return f"/v2/runs/{_q(run_id)}/stream/{_q(name)}"

    async def write(self, name: str, run_id: str, chunk: bytes | str) -> None:
        body = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        await self.w.http.request("PUT", self._path(name, run_id), body=body, retry_statuses=frozenset({429}))

    async def write_multi(self, name: str, run_id: str, chunks: Sequence[bytes | str]) -> None:
        header, value = VERCEL_MULTI_HEADER
        for start in range(0, len(chunks), MAX_CHUNKS_PER_REQUEST):
            await self.w.http.request(
                "PUT",
                self._path(name, run_id),
                body=vercel_multi_body(chunks[start : start + MAX_CHUNKS_PER_REQUEST]),
                headers={header: value},
                retry_statuses=frozenset({429}),  # an append is not idempotent: only what was surely not applied
            )

    async def close(self, name: str, run_id: str) -> None:
        header, value = VERCEL_DONE_HEADER
        await self.w.http.request(
            "PUT",
            self._path(name, run_id),
            headers={header: value},
            retry_statuses=frozenset({429, 500, 502, 503, 504}),  # closing twice is harmless
        )

    async def write_values(self, name: str, run_id: str, values: Sequence[Any], *, close: bool = False) -> None:
        """Values written as ``getWritable().getWriter().write(v)`` writes them: serialized, encrypted
        when the deployment key is configured, one frame per chunk; then closed when ``close``."""
        key = self.w.run_key(run_id)
        encrypt = key.encrypt if key is not None else None
        chunks = [encode_chunk(v, encrypt=encrypt) for v in values]
        if len(chunks) == 1:
            await self.write(name, run_id, chunks[0])
        elif chunks:
            await self.write_multi(name, run_id, chunks)
        if close:
            await self.close(name, run_id)

    async def list(self, run_id: str) -> builtins.list[str]:
        data = await self.w.get(f"/v2/runs/{_q(run_id)}/streams")
        return [str(n) for n in data] if isinstance(data, list) else []

    async def get_chunks(self, name: str, run_id: str, *, limit: int = 100, cursor: str | None = None) -> StreamChunks:
        path = f"/v2/runs/{_q(run_id)}/streams/{_q(name)}/chunks"
        data = await self.w.get(path, {"limit": str(limit), "cursor": cursor})
        page = self.w.page(data, lambda c: StreamChunk(index=int(c["index"]), data=bytes(c["data"])), "stream chunks")
        return self.w.build(
            "stream chunks",
            lambda: StreamChunks(data=page.data, cursor=page.cursor, has_more=page.has_more, done=bool(data["done"])),
        )

    async def get_info(self, name: str, run_id: str) -> StreamInfo:
        data = await self.w.get(f"/v2/runs/{_q(run_id)}/streams/{_q(name)}/info")
        return self.w.build(
            "stream info", lambda: StreamInfo(tail_index=int(data["tailIndex"]), done=bool(data["done"]))
        )

    async def read_values(self, name: str, run_id: str, *, page_size: int = 100) -> tuple[builtins.list[Any], bool]:
        """(the values written so far, whether the stream is closed): a snapshot, paged."""
        key = self.w.run_key(run_id)
        decoder = StreamDecoder(decrypt=key.decrypt if key is not None else None)
        values: list[Any] = []
        cursor: str | None = None
        while True:
            page = await self.get_chunks(name, run_id, limit=page_size, cursor=cursor)
            for chunk in page.data:
                values.extend(decoder.feed(chunk.data))
            if not page.has_more or not page.cursor:
                return values, page.done
            cursor = page.cursor

    async def live(self, name: str, start_index: int | None = None) -> AsyncIterator[bytes]:
        """``readFromStream``: the stream's bytes from ``start_index``, held open until it closes."""
        query = {"startIndex": str(start_index)} if start_index is not None else None
        async for chunk in self.w.http.stream(f"/v2/stream/{_q(name)}", query):
            yield chunk
