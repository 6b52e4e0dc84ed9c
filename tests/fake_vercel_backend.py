"""A FAKE Vercel workflow server: the routes ``@workflow/world-vercel`` 4.7 and ``vercel-workflow``
(Python) call, served from memory, for tests only (Vercel's servers are not reachable here).

It is a *contract* server: what it accepts and answers is what the two real clients send and
parse, and the tests prove it by driving it with both (tests/vercel_node/*.mjs under node with the
real npm package; ``vercel.workflow._internal.worlds.vercel.VercelWorld`` in Python). It is not a
model of the real server's storage, only of its wire behaviour:

* ``/v4`` events (world-vercel 4.7): POST one frame ``u32 meta_len | CBOR meta | u32 body_len |
  body`` and answer ``x-wf-*`` headers plus a CBOR entity bag; GET one frame per event, a list
  ending with the ``{_end: 1, next?}`` sentinel; payload bytes in the frame body, a CBOR
  StructuredError for run_failed/step_failed/step_retrying.
* ``/v3`` events (vercel-workflow): CBOR request bodies and CBOR pages over the same store.
* ``/v2`` runs, steps, hooks, streams: CBOR (JSON when the client does not ask for CBOR), dates as
  CBOR epoch tags, payloads as byte strings; stream PUTs (single, ``X-Stream-Multi``,
  ``X-Stream-Done``) and the live read (``GET /v2/stream/<name>``, ``/v3/runs/<id>/stream/<name>``).

Every route is served under each prefix in ``prefixes`` (``/api`` is the direct path, the others
stand in for ``WORKFLOW_VERCEL_BACKEND_URL`` proxies). Requests without ``Authorization: Bearer
<token>`` get 401. ``fail()`` injects statuses; ``requests`` records what came in.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cbor2
from aiohttp import web
from ulid import ULID

from telemetry.stream_format import serialize_value, split_multi_chunks

from .threaded_server import serve_in_thread

FRAMES = "application/vnd.workflow.v4-frames"
PAYLOAD_FIELD = {
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
ERROR_EVENTS = {"run_failed", "step_failed", "step_retrying"}
TERMINAL = {"completed", "failed", "cancelled"}
#: v4 meta fields that are eventData on the stored event (renamed as events.ts renames them)
META_TO_DATA = {
    "deploymentId": "deploymentId",
    "workflowName": "workflowName",
    "stepName": "stepName",
    "attempt": "attempt",
    "resumeAt": "resumeAt",
    "retryAfter": "retryAfter",
    "hookToken": "token",
    "hookIsWebhook": "isWebhook",
    "errorCode": "errorCode",
    "executionContext": "executionContext",
}
_U32 = struct.Struct(">I")


def now() -> datetime:
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def frame(meta: dict[str, Any], body: bytes) -> bytes:
    raw = cbor2.dumps(meta, datetime_as_timestamp=True)
    return _U32.pack(len(raw)) + raw + _U32.pack(len(body)) + body


def parse_frame(data: bytes) -> tuple[dict[str, Any], bytes]:
    (meta_len,) = _U32.unpack_from(data, 0)
    meta = cbor2.loads(data[4 : 4 + meta_len], tag_hook=_tag_hook)
    (body_len,) = _U32.unpack_from(data, 4 + meta_len)
    body = data[8 + meta_len : 8 + meta_len + body_len]
    return meta, body


def _tag_hook(*args: Any) -> Any:  # cbor2 5: (decoder, tag); cbor2 6: (tag, shareable)
    tag = next(a for a in args if isinstance(a, cbor2.CBORTag))
    return tag.value if tag.tag == 64 else tag


def _cursor(key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": key}).encode()).decode()


def _uncursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        return str(json.loads(base64.urlsafe_b64decode(cursor.encode()))["after"])
    except Exception:
        raise web.HTTPBadRequest(
            text=json.dumps({"message": "invalid cursor"}), content_type="application/json"
        ) from None


def _without_bytes(entity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entity.items() if not isinstance(v, bytes)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


@dataclass
class StoredEvent:
    entity: dict[str, Any]  # eventId, runId, eventType, correlationId?, createdAt, specVersion, eventData (no payload)
    payload: bytes = b""  # the user bytes, or CBOR of the structured error

    @property
    def event_id(self) -> str:
        return str(self.entity["eventId"])

    def with_payload(self, *, decode_error: bool = True) -> dict[str, Any]:
        """The event as /v3 answers it: eventData holding the payload field."""
        out = dict(self.entity)
        data = dict(out.get("eventData") or {})
        field_name = PAYLOAD_FIELD.get(out["eventType"])
        if field_name and self.payload:
            if out["eventType"] in ERROR_EVENTS and decode_error:
                data[field_name] = cbor2.loads(self.payload)
            else:
                data[field_name] = self.payload
        out["eventData"] = data
        return out


@dataclass
class Stream:
    run_id: str | None
    chunks: list[bytes] = field(default_factory=list)
    done: bool = False
    changed: asyncio.Event | None = None


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    headers: dict[str, str]
    body: bytes
    content_type: str
    times: int


class FakeVercelBackend:
    """The fake workflow server's state and routes (see the module doc)."""

    def __init__(self, *, token: str = "test-token-5f0c", prefixes: tuple[str, ...] = ("/api", "/proxy")) -> None:
        self.token = token
        self.prefixes = prefixes
        self.runs: dict[str, dict[str, Any]] = {}
        self.steps: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: dict[str, list[StoredEvent]] = {}
        self.hooks: dict[str, dict[str, Any]] = {}
        self.waits: dict[tuple[str, str], dict[str, Any]] = {}
        self.streams: dict[str, Stream] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.faults: list[Fault] = []
        self.url = ""  # where serve() listens
        self.truncate_lists = False
        self.live_timeout = 3.0
        #: seconds each event-log read waits before it is answered (a network's latency), and the most
        #: such reads seen in flight at once (readers that overlap their reads show it here)
        self.latency = 0.0
        self.max_in_flight = 0
        self._in_flight = 0
        self._last = ULID()
        self._lock = threading.Lock()

    # -- test controls -------------------------------------------------------------------------
    def fail(
        self,
        method: str,
        path: str,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        body: Any = None,
        times: int = 1,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        """The next ``times`` requests matching ``method`` and the regex ``path`` answer ``status``."""
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        self.faults.append(Fault(method, re.compile(path), status, headers or {}, payload, content_type, times))

    def serve(self) -> tuple[str, Any]:
        """(base URL, stop) of this backend on a loopback port, on its own thread."""
        self.url, stop = serve_in_thread(self.app())
        return self.url, stop

    # -- plumbing ------------------------------------------------------------------------------
    def _event_id(self) -> str:
        with self._lock:
            candidate = ULID()
            if candidate.milliseconds <= self._last.milliseconds:
                candidate = ULID.from_int(int(self._last) + 1)
            self._last = candidate
            return f"evnt_{candidate}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024 * 1024)
        routes = [
            ("POST", "/v4/runs/{run_id}/events/{event_type}", self.v4_create),
            ("POST", "/v4/runs/{run_id}/events", self.v4_create),
            ("GET", "/v4/runs/{run_id}/events", self.v4_list),
            ("GET", "/v4/runs/{run_id}/events/{event_id}", self.v4_get),
            ("GET", "/v4/events", self.v4_by_correlation),
            ("POST", "/v3/runs/{run_id}/events", self.v3_create),
            ("GET", "/v3/runs/{run_id}/events", self.v3_list),
            ("GET", "/v2/runs", self.runs_list),
            ("GET", "/v2/runs/{run_id}", self.runs_get),
            ("GET", "/v2/runs/{run_id}/steps", self.steps_list),
            ("GET", "/v2/runs/{run_id}/steps/{step_id}", self.steps_get),
            ("GET", "/v2/steps/{step_id}", self.steps_get),
            ("GET", "/v2/hooks", self.hooks_list),
            ("GET", "/v2/hooks/by-token", self.hooks_by_token),
            ("GET", "/v2/hooks/{hook_id}", self.hooks_get),
            ("PUT", "/v2/runs/{run_id}/stream/{name}", self.stream_put),
            ("GET", "/v2/stream/{name}", self.stream_read),
            ("GET", "/v3/runs/{run_id}/stream/{name}", self.stream_read),
            ("GET", "/v2/runs/{run_id}/streams", self.streams_list),
            ("GET", "/v2/runs/{run_id}/streams/{name}/chunks", self.stream_chunks),
            ("GET", "/v2/runs/{run_id}/streams/{name}/info", self.stream_info),
        ]
        for prefix in self.prefixes:
            for method, path, handler in routes:
                app.router.add_route(method, prefix + path, handler)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, dict(request.headers)))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"message": "Unauthorized", "code": "UNAUTHORIZED"}, status=401)
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and fault.path.search(request.path):
                fault.times -= 1
                return web.Response(
                    status=fault.status, body=fault.body, headers=fault.headers, content_type=fault.content_type
                )
        slow = self.latency > 0 and request.method == "GET" and request.path.endswith("/events")
        if slow:
            self._in_flight += 1  # one loop thread serves every request: no lock needed
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if slow:
                await asyncio.sleep(self.latency)
            return await handler(request)
        except web.HTTPException as error:
            return error
        except _Conflict as error:
            return web.json_response({"message": str(error), "code": error.code}, status=error.status)
        finally:
            if slow:
                self._in_flight -= 1

    @staticmethod
    def _answer(request: web.Request, value: Any, status: int = 200) -> web.Response:
        if "application/cbor" in request.headers.get("Accept", ""):
            return web.Response(
                status=status, body=cbor2.dumps(value, datetime_as_timestamp=True), content_type="application/cbor"
            )
        return web.json_response(_jsonable(value), status=status)

    # -- events: applying one ------------------------------------------------------------------
    def apply(
        self,
        run_id: str,
        event_type: str,
        *,
        correlation_id: str | None,
        spec_version: int,
        data: dict[str, Any],
        payload: bytes | None,
        error: Any = None,
        stack: str | None = None,
    ) -> tuple[StoredEvent, dict[str, Any]]:
        """Record one event and materialize its entity; (the event, the EventResult bag)."""
        at = now()
        run = self.runs.get(run_id)
        if event_type != "run_created" and run is None:
            raise _Conflict(f'Workflow run "{run_id}" not found', status=404, code="NOT_FOUND")
        if run is not None and run["status"] in TERMINAL and event_type.startswith(("run_", "step_", "wait_")):
            raise _Conflict(f'Run "{run_id}" is already {run["status"]}', status=409, code="CONFLICT")
        structured = None
        if event_type in ERROR_EVENTS:
            if isinstance(error, str):
                structured = {"message": error, "stack": stack}
            elif isinstance(error, dict):
                structured = {"message": error.get("message", ""), "stack": error.get("stack") or stack}
            if structured is not None and data.get("errorCode"):
                structured["code"] = data["errorCode"]
        stored_payload = cbor2.dumps(structured) if structured is not None else (payload or b"")
        bag: dict[str, Any] = {}
        if event_type == "run_created":
            if run is not None:
                raise _Conflict(f'Workflow run "{run_id}" already exists', status=409, code="CONFLICT")
            run = {
                "runId": run_id,
                "status": "pending",
                "deploymentId": data.get("deploymentId", ""),
                "workflowName": data.get("workflowName", ""),
                "specVersion": spec_version,
                "input": payload or b"",
                "createdAt": at,
                "updatedAt": at,
            }
            if data.get("executionContext") is not None:
                run["executionContext"] = data["executionContext"]
            self.runs[run_id] = run
            bag["run"] = run
        elif event_type == "run_started":
            assert run is not None
            run["status"] = "running"
            run.setdefault("startedAt", at)
            run["updatedAt"] = at
            bag["run"] = run
        elif event_type in ("run_completed", "run_failed", "run_cancelled"):
            assert run is not None
            run["status"] = {"run_completed": "completed", "run_failed": "failed"}.get(event_type, "cancelled")
            run["completedAt"] = at
            run["updatedAt"] = at
            if event_type == "run_completed":
                run["output"] = payload or b""
            if structured is not None:
                run["error"] = {k: v for k, v in structured.items() if k != "code" and v is not None}
                if structured.get("code"):
                    run["errorCode"] = structured["code"]
            bag["run"] = run
        elif event_type.startswith("step_"):
            key = (run_id, correlation_id or "")
            step = self.steps.get(key)
            if event_type == "step_created":
                if step is not None:
                    raise _Conflict(f'Step "{correlation_id}" already exists', status=409, code="CONFLICT")
                step = {
                    "runId": run_id,
                    "stepId": correlation_id,
                    "stepName": data.get("stepName", ""),
                    "status": "pending",
                    "attempt": 0,
                    "input": payload or b"",
                    "createdAt": at,
                    "updatedAt": at,
                    "specVersion": spec_version,
                }
                self.steps[key] = step
            elif step is None:
                raise _Conflict(f'Step "{correlation_id}" not found', status=404, code="NOT_FOUND")
            elif event_type == "step_started":
                step["status"] = "running"
                step["attempt"] = int(step.get("attempt", 0)) + 1
                step.setdefault("startedAt", at)
            elif event_type == "step_completed":
                step["status"] = "completed"
                step["output"] = payload or b""
                step["completedAt"] = at
            elif event_type == "step_failed":
                step["status"] = "failed"
                step["error"] = structured
                step["completedAt"] = at
            elif event_type == "step_retrying":
                step["status"] = "pending"
                step["error"] = structured
                if data.get("retryAfter") is not None:
                    step["retryAfter"] = data["retryAfter"]
            step["updatedAt"] = at
            bag["step"] = step
        elif event_type == "hook_created":
            token = data.get("token")
            if any(h["token"] == token for h in self.hooks.values()):
                raise _Conflict("Hook token already in use", status=409, code="CONFLICT")
            hook = {
                "runId": run_id,
                "hookId": correlation_id,
                "token": token,
                "ownerId": "team_fake",
                "projectId": "prj_fake",
                "environment": "production",
                "createdAt": at,
                "specVersion": spec_version,
            }
            if payload:
                hook["metadata"] = payload
            if "isWebhook" in data:
                hook["isWebhook"] = data["isWebhook"]
            self.hooks[str(correlation_id)] = hook
            bag["hook"] = hook
        elif event_type in ("hook_received", "hook_disposed"):
            if str(correlation_id) not in self.hooks:
                raise _Conflict("Hook not found", status=404, code="NOT_FOUND")
            if event_type == "hook_disposed":
                bag["hook"] = self.hooks.pop(str(correlation_id))
        elif event_type == "wait_created":
            wait = {"waitId": correlation_id, "runId": run_id, "status": "waiting", "createdAt": at}
            if data.get("resumeAt") is not None:
                wait["resumeAt"] = data["resumeAt"]
            self.waits[(run_id, str(correlation_id))] = wait
            bag["wait"] = wait
        elif event_type == "wait_completed":
            wait = self.waits.get((run_id, str(correlation_id)))
            if wait is not None:
                wait.update(status="completed", completedAt=at, updatedAt=at)
                bag["wait"] = wait
        entity: dict[str, Any] = {
            "eventId": self._event_id(),
            "runId": run_id,
            "eventType": event_type,
            "createdAt": at,
            "specVersion": spec_version,
            "eventData": data,
        }
        if correlation_id:
            entity["correlationId"] = correlation_id
        event = StoredEvent(entity, stored_payload)
        self.events.setdefault(run_id, []).append(event)
        bag["event"] = entity
        return event, bag

    # -- /v4 -----------------------------------------------------------------------------------
    async def v4_create(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        meta, body = parse_frame(await request.read())
        event_type = str(meta["eventType"])
        data = {META_TO_DATA[k]: v for k, v in meta.items() if k in META_TO_DATA}
        event, bag = self.apply(
            run_id,
            event_type,
            correlation_id=meta.get("correlationId"),
            spec_version=int(meta.get("specVersion", 2)),
            data=data,
            payload=body if body else None,
            error=meta.get("error"),
            stack=meta.get("stack"),
        )
        if meta.get("remoteRefBehavior") != "resolve":  # lazy: the entities come back without payloads
            bag = {name: _without_bytes(entity) for name, entity in bag.items()}
        headers = {
            "x-wf-event-id": event.event_id,
            "x-wf-run-id": run_id,
            "x-wf-created-at": event.entity["createdAt"].isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        return web.Response(
            body=cbor2.dumps(bag, datetime_as_timestamp=True), content_type="application/cbor", headers=headers
        )

    def _v4_meta(self, event: StoredEvent) -> dict[str, Any]:
        meta = dict(event.entity)
        data = dict(meta.get("eventData") or {})
        field_name = PAYLOAD_FIELD.get(meta["eventType"])
        if field_name and event.payload:
            data[field_name] = {"_type": "RemoteRef", "key": f"{meta['runId']}/{meta['eventId']}/{field_name}"}
        meta["eventData"] = data
        return meta

    @staticmethod
    def _page(
        items: list[Any], key: Any, request: web.Request, default_order: str = "asc"
    ) -> tuple[list[Any], str | None]:
        order = request.query.get("sortOrder") or default_order
        limit = int(request.query.get("limit") or 100)
        after = _uncursor(request.query.get("cursor"))
        ordered = sorted(items, key=key, reverse=order == "desc")
        if after is not None:
            ordered = [i for i in ordered if (key(i) < after if order == "desc" else key(i) > after)]
        page = ordered[:limit]
        next_cursor = _cursor(key(page[-1])) if len(ordered) > limit and page else None
        return page, next_cursor

    def _frames_response(
        self, request: web.Request, events: list[StoredEvent], next_cursor: str | None
    ) -> web.Response:
        lazy = request.query.get("remoteRefBehavior") == "lazy"
        out = bytearray()
        for event in events:
            out += frame(self._v4_meta(event), b"" if lazy else event.payload)
        if not self.truncate_lists:
            end: dict[str, Any] = {"_end": 1}
            if next_cursor:
                end["next"] = next_cursor
            out += frame(end, b"")
        return web.Response(body=bytes(out), content_type=FRAMES)

    async def v4_list(self, request: web.Request) -> web.Response:
        events = self.events.get(request.match_info["run_id"], [])
        page, next_cursor = self._page(events, lambda e: e.event_id, request)
        return self._frames_response(request, page, next_cursor)

    async def v4_get(self, request: web.Request) -> web.Response:
        for event in self.events.get(request.match_info["run_id"], []):
            if event.event_id == request.match_info["event_id"]:
                return web.Response(body=frame(self._v4_meta(event), event.payload), content_type=FRAMES)
        return web.json_response({"message": "Event not found"}, status=404)

    async def v4_by_correlation(self, request: web.Request) -> web.Response:
        correlation = request.query.get("correlationId")
        run_id = request.query.get("runId")
        matching = [
            e
            for rid, events in self.events.items()
            if run_id in (None, rid)
            for e in events
            if e.entity.get("correlationId") == correlation
        ]
        page, next_cursor = self._page(matching, lambda e: e.event_id, request)
        return self._frames_response(request, page, next_cursor)

    # -- /v3 (vercel-workflow, Python) ---------------------------------------------------------
    async def v3_create(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        body = cbor2.loads(await request.read(), tag_hook=_tag_hook)
        if run_id == "null":
            run_id = f"wrun_{ULID()}"
        event_type = str(body["eventType"])
        data = dict(body.get("eventData") or {})
        field_name = PAYLOAD_FIELD.get(event_type)
        payload = data.pop(field_name, None) if field_name else None
        error = None
        if event_type in ERROR_EVENTS and not isinstance(payload, bytes):
            error, payload = payload, None
        _, bag = self.apply(
            run_id,
            event_type,
            correlation_id=body.get("correlationId"),
            spec_version=int(body.get("specVersion", 2)),
            data=data,
            payload=payload if isinstance(payload, bytes) else None,
            error=error,
            stack=data.pop("stack", None) if error is not None else None,
        )
        event = self.events[run_id][-1]
        bag["event"] = event.with_payload()
        return web.Response(body=cbor2.dumps(bag, datetime_as_timestamp=True), content_type="application/cbor")

    async def v3_list(self, request: web.Request) -> web.Response:
        events = self.events.get(request.match_info["run_id"], [])
        page, next_cursor = self._page(events, lambda e: e.event_id, request)
        result = {"data": [e.with_payload() for e in page], "cursor": next_cursor, "hasMore": next_cursor is not None}
        return self._answer(request, result)

    # -- /v2 runs, steps, hooks ----------------------------------------------------------------
    @staticmethod
    def _lazy(entity: dict[str, Any], request: web.Request, fields: tuple[str, ...]) -> dict[str, Any]:
        if request.query.get("remoteRefBehavior") != "lazy":
            return entity
        out = {k: v for k, v in entity.items() if k not in fields}
        for name in fields:
            if name in entity:
                out[f"{name}Ref"] = {"_type": "RemoteRef", "key": name}
        return out

    async def runs_list(self, request: web.Request) -> web.Response:
        runs = [
            r
            for r in self.runs.values()
            if request.query.get("status") in (None, r["status"])
            and request.query.get("workflowName") in (None, r["workflowName"])
        ]
        page, next_cursor = self._page(
            runs, lambda r: f"{r['createdAt'].isoformat()}|{r['runId']}", request, default_order="desc"
        )
        data = [self._lazy(r, request, ("input", "output")) for r in page]
        return self._answer(request, {"data": data, "cursor": next_cursor, "hasMore": next_cursor is not None})

    async def runs_get(self, request: web.Request) -> web.Response:
        run = self.runs.get(request.match_info["run_id"])
        if run is None:
            return web.json_response({"message": "Run not found", "code": "NOT_FOUND"}, status=404)
        return self._answer(request, self._lazy(run, request, ("input", "output")))

    async def steps_list(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        steps = [s for (rid, _), s in self.steps.items() if rid == run_id]
        page, next_cursor = self._page(steps, lambda s: s["stepId"], request)
        data = [self._lazy(s, request, ("input", "output")) for s in page]
        return self._answer(request, {"data": data, "cursor": next_cursor, "hasMore": next_cursor is not None})

    async def steps_get(self, request: web.Request) -> web.Response:
        step_id = request.match_info["step_id"]
        run_id = request.match_info.get("run_id")
        for (rid, sid), step in self.steps.items():
            if sid == step_id and run_id in (None, rid):
                return self._answer(request, self._lazy(step, request, ("input", "output")))
        return web.json_response({"message": "Step not found", "code": "NOT_FOUND"}, status=404)

    async def hooks_list(self, request: web.Request) -> web.Response:
        run_id = request.query.get("runId")
        hooks = [h for h in self.hooks.values() if run_id in (None, h["runId"])]
        page, next_cursor = self._page(hooks, lambda h: h["hookId"], request)
        return self._answer(request, {"data": page, "cursor": next_cursor, "hasMore": next_cursor is not None})

    async def hooks_get(self, request: web.Request) -> web.Response:
        hook = self.hooks.get(request.match_info["hook_id"])
        if hook is None:
            return web.json_response({"message": "Hook not found", "code": "NOT_FOUND"}, status=404)
        return self._answer(request, hook)

    async def hooks_by_token(self, request: web.Request) -> web.Response:
        for hook in self.hooks.values():
            if hook["token"] == request.query.get("token"):
                return self._answer(request, hook)
        return web.json_response({"message": "Hook not found", "code": "NOT_FOUND"}, status=404)

    # -- streams -------------------------------------------------------------------------------
    def _stream(self, name: str, run_id: str | None) -> Stream:
        stream = self.streams.get(name)
        if stream is None:
            stream = self.streams[name] = Stream(run_id)
        if stream.changed is None:
            stream.changed = asyncio.Event()
        if stream.run_id is None:
            stream.run_id = run_id
        return stream

    async def stream_put(self, request: web.Request) -> web.Response:
        run_id, name = request.match_info["run_id"], request.match_info["name"]
        stream = self._stream(name, run_id)
        body = await request.read()
        if request.headers.get("X-Stream-Done") == "true":
            stream.done = True
        else:
            run = self.runs.get(run_id)
            if run is not None and run["status"] in TERMINAL:
                return web.json_response(
                    {"message": f'Run "{run_id}" is already {run["status"]}', "code": "CONFLICT"}, status=409
                )
            if stream.done:
                return web.json_response({"message": f'Stream "{name}" is closed', "code": "CONFLICT"}, status=409)
            if request.headers.get("X-Stream-Multi") == "true":
                stream.chunks.extend(split_multi_chunks(body))
            else:
                stream.chunks.append(body)
        assert stream.changed is not None
        stream.changed.set()
        stream.changed = asyncio.Event()
        return web.Response(status=200)

    async def stream_read(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        stream = self._stream(name, request.match_info.get("run_id"))
        start = int(request.query.get("startIndex") or 0)
        if start < 0:
            start = max(0, len(stream.chunks) + start)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        index = start
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.live_timeout
        while True:
            while index < len(stream.chunks):
                await response.write(stream.chunks[index])
                index += 1
            if stream.done or loop.time() >= deadline:
                break
            assert stream.changed is not None
            try:
                await asyncio.wait_for(stream.changed.wait(), max(0.01, deadline - loop.time()))
            except TimeoutError:
                pass
        await response.write_eof()
        return response

    async def streams_list(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        return self._answer(request, sorted(n for n, s in self.streams.items() if s.run_id == run_id))

    async def stream_chunks(self, request: web.Request) -> web.Response:
        stream = self._stream(request.match_info["name"], request.match_info["run_id"])
        limit = int(request.query.get("limit") or 100)
        cursor = request.query.get("cursor")
        start = int(cursor) if cursor else 0
        page = stream.chunks[start : start + limit]
        end = start + len(page)
        has_more = end < len(stream.chunks)
        return self._answer(
            request,
            {
                "data": [{"index": start + i, "data": c} for i, c in enumerate(page)],
                "cursor": str(end) if has_more else None,
                "hasMore": has_more,
                "done": stream.done and not has_more,
            },
        )

    async def stream_info(self, request: web.Request) -> web.Response:
        stream = self._stream(request.match_info["name"], request.match_info["run_id"])
        return self._answer(request, {"tailIndex": len(stream.chunks) - 1, "done": stream.done})


class _Conflict(Exception):
    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def seed_run(fake: FakeVercelBackend, run_id: str, steps: int, *, finish: bool = True) -> None:
    """A run as the SDK logs one: created, started, ``steps`` steps (created, started, completed), and
    completed unless ``finish`` is False (then it is live: running, its last step done)."""
    fake.apply(
        run_id,
        "run_created",
        correlation_id=None,
        spec_version=2,
        data={"workflowName": "wf", "deploymentId": "d"},
        payload=serialize_value([]),
    )
    fake.apply(run_id, "run_started", correlation_id=None, spec_version=2, data={}, payload=None)
    for i in range(steps):
        step = f"step_{run_id[5:]}{i:04d}"
        fake.apply(
            run_id,
            "step_created",
            correlation_id=step,
            spec_version=2,
            data={"stepName": "s"},
            payload=serialize_value([i]),
        )
        fake.apply(run_id, "step_started", correlation_id=step, spec_version=2, data={}, payload=None)
        fake.apply(run_id, "step_completed", correlation_id=step, spec_version=2, data={}, payload=serialize_value(i))
    if finish:
        fake.apply(
            run_id, "run_completed", correlation_id=None, spec_version=2, data={}, payload=serialize_value(steps)
        )
