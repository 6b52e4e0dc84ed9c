"""A Sentry relay for SDKs we cannot hook into (JavaScript included): the same rules, over HTTP.

``POST /api/{project_id}/envelope/`` and the legacy ``/api/{project_id}/store/`` take what any
Sentry SDK sends. Each event item is judged by ``telemetry.sentry.classify``; dropped ones are
counted by rule and by run id. What remains goes to the upstream Sentry of ``--sentry-upstream``
with the client's own auth header and query string; kept items travel unchanged byte for byte
(the whole body too, still compressed, when nothing was dropped). Upstream down: the forwarder's
spool holds it and retries with backoff.

Whatever a client sends is answered 2xx or 4xx: a malformed envelope is a 400 with the reason,
an event of odd shapes is judged on what the rules can read of it (``event_for_rules``) and
forwarded as it came. Bodies share OTLP ingest's byte budget (``admission``): past it, a 503 with
``Retry-After`` before the body is read, as Sentry SDKs expect of a busy relay. When the
collector has a token, SDKs authenticate with it as their DSN's
key (``http://<token>@host:port/<project>``); what goes upstream then carries the upstream DSN's
key instead (in the auth header, the query and the envelope's trace header, where SDKs repeat
their key), so the token never leaves the collector.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web

from telemetry.sentry import SentryEvent, classify, workflow_ids
from telemetry.sentry_envelope import BadEnvelope, Item, event_for_rules, parse_envelope

from .admission import DEFAULT_MAX_PENDING_BYTES, Admission, Refused, Ticket
from .content_coding import BadData, TooLarge
from .forward import Forwarder
from .ingest import admit, answer_then_drain, read_limited, refusal
from .writer import Batch, Overloaded, StoreUnavailable, Writer, storage_fault

__all__ = ["ENVELOPE_ROUTE", "STORE_ROUTE", "SentryRelay", "sentry_key", "upstream_base", "upstream_key"]

#: route names, so the token check knows these routes take the token as a DSN key
ENVELOPE_ROUTE, STORE_ROUTE = "sentry-envelope", "sentry-store"

log = logging.getLogger("collector.sentry")
_EVENT_TYPES = ("event",)


def upstream_base(dsn: str) -> tuple[str, str]:
    """(``scheme://host[:port][/path]``, project id) of a DSN."""
    parts = urlsplit(dsn)
    if not parts.scheme or not parts.hostname or not parts.path.strip("/"):
        raise ValueError(f"not a Sentry DSN: {dsn!r} (expected https://KEY@HOST/PROJECT_ID)")
    path, _, project = parts.path.rstrip("/").rpartition("/")
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{path}", project


def upstream_key(dsn: str) -> str | None:
    """The public key of a DSN (``https://KEY@HOST/PROJECT_ID``)."""
    return urlsplit(dsn).username or None


def sentry_key(request: web.Request) -> str | None:
    """The DSN key a Sentry SDK authenticates with: ``X-Sentry-Auth: Sentry sentry_key=…`` or ``?sentry_key=``."""
    auth = request.headers.get("X-Sentry-Auth", "")
    if auth[:7].lower() == "sentry ":
        for part in auth[7:].split(","):
            name, _, value = part.strip().partition("=")
            if name.strip() == "sentry_key":
                return value.strip()
    return request.query.get("sentry_key")


class _Refused(Exception):
    """Answer the client with this response instead."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class SentryRelay:
    def __init__(
        self,
        writer: Writer,
        forwarder: Forwarder | None,
        upstream_dsn: str | None,
        *,
        max_body: int,
        token: str | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.writer = writer
        self.forwarder = forwarder
        self.upstream = upstream_base(upstream_dsn) if upstream_dsn else None
        self.upstream_key = upstream_key(upstream_dsn) if upstream_dsn else None
        self.token = token
        self.max_body = max_body
        #: the byte budget shared with OTLP ingest: a body is charged from admission to being spooled
        self.admission = admission or Admission(DEFAULT_MAX_PENDING_BYTES, max_body=max_body)
        self.dropped: Counter[str] = Counter()
        self.kept = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/{project_id}/envelope/", self.envelope, name=ENVELOPE_ROUTE),
            web.post("/api/{project_id}/store/", self.store, name=STORE_ROUTE),
        ]

    def _judge(self, event: SentryEvent | None) -> str | None:
        """The id of the rule that drops ``event`` (a view from ``event_for_rules``), or None."""
        if event is None:
            return None  # not ours to judge: pass it on
        rule = classify(event)
        return rule.id if rule else None

    async def _record_drops(self, drops: list[tuple[str, SentryEvent]]) -> None:
        rows = []
        for rule_id, event in drops:
            run_id = workflow_ids(event)[0]
            rows.append((_clean(run_id, 200) if run_id else None, rule_id, _clean(_summary(event), 500)))
        try:
            await self.writer.submit(Batch(sentry_drops=rows))
        except Overloaded:
            raise _Refused(
                web.Response(
                    status=503,
                    headers={"Retry-After": str(self.admission.retry_after())},  # jittered like the budget's
                    text="collector is overloaded; retry later",
                )
            ) from None
        except StoreUnavailable as error:
            raise _Refused(_unavailable(error)) from None
        except Exception as error:  # the store refused this request's rows; others are unharmed
            refused = web.Response(status=422, text=f"the store refused this event ({type(error).__name__})")
            raise _Refused(refused) from None
        for (rule_id, event), (run_id, _, _) in zip(drops, rows, strict=True):
            self.dropped[rule_id] += 1
            log.debug("sentry relay dropped event %.40r by rule %s (run %s)", event.get("event_id"), rule_id, run_id)

    async def _forward(self, request: web.Request, kind: str, body: bytes, *, original: bool) -> None:
        """Spool ``body`` for upstream; ``original``: the very bytes the client sent (keep their encoding)."""
        if self.forwarder is None or self.upstream is None:
            return
        base, project = self.upstream
        query = request.query_string
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in ("x-sentry-auth", "content-type", "user-agent")
        }
        if self.token is not None:  # the client's key is our token: upstream gets its own DSN's key
            query = urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "sentry_key"])
            headers = {k: v for k, v in headers.items() if k.lower() != "x-sentry-auth"}
            if self.upstream_key:
                headers["X-Sentry-Auth"] = f"Sentry sentry_version=7, sentry_key={self.upstream_key}"
        url = f"{base}/api/{project}/{kind}/" + (f"?{query}" if query else "")
        if original and request.headers.get("Content-Encoding"):
            headers["Content-Encoding"] = request.headers["Content-Encoding"]
        try:
            await self.forwarder.enqueue(body, url=url, headers=headers)
        except OSError as error:
            fault = storage_fault(error)
            if fault is None:
                raise
            raise _Refused(_unavailable(fault)) from None

    def _key_swap(self) -> tuple[bytes, bytes]:
        """(our token, the upstream DSN's key) as bytes: what replaces the token wherever an SDK repeated it."""
        return (self.token or "").encode(), (self.upstream_key or "").encode()

    def _outgoing(self, header: bytes, items: list[Item]) -> bytes:
        """The envelope to forward: ``items`` under ``header``, each as received unless the token is in
        it (SDKs repeat their DSN key, e.g. as ``trace.public_key``): then with the upstream key instead,
        and its ``length`` made right."""
        if self.token is None:
            return header + b"".join(i.raw for i in items)
        token, key = self._key_swap()
        out = header.replace(token, key)
        for item in items:
            if token not in item.raw:
                out += item.raw
                continue
            payload = item.payload.replace(token, key)
            item_header = dict(item.header or {})
            if "length" in item_header:
                item_header["length"] = len(payload)
            out += json.dumps(item_header).encode().replace(token, key) + b"\n" + payload + b"\n"
        return out

    async def envelope(self, request: web.Request) -> web.StreamResponse:
        return await self._admitted(request, self._envelope, "envelope")

    async def _admitted(
        self,
        request: web.Request,
        handle: Callable[[web.Request, Ticket], Awaitable[web.Response]],
        what: str,
    ) -> web.StreamResponse:
        """``handle`` under the shared byte budget: refused on its headers, or while its body streams."""
        try:
            ticket = admit(request, self.admission, route="sentry")
        except Refused as refused:
            return refusal(refused)
        try:
            return await handle(request, ticket)
        except Refused as refused:  # a body without Content-Length outgrew the budget while read
            return await answer_then_drain(request, refusal(refused), limit=self.max_body)
        except TooLarge:
            too_large = web.Response(status=413, text=f"{what} over {self.max_body} bytes")
            return await answer_then_drain(request, too_large, limit=self.max_body)
        finally:
            ticket.release()

    async def _envelope(self, request: web.Request, ticket: Ticket) -> web.Response:
        try:
            raw, body = await read_limited(request, self.max_body, keep_raw=True, ticket=ticket)
            header, items = parse_envelope(body)
        except (BadEnvelope, BadData) as error:
            return web.Response(status=400, text=str(error))
        kept: list[Item] = []
        drops: list[tuple[str, SentryEvent]] = []
        for item in items:
            event = event_for_rules(item.payload) if item.type in _EVENT_TYPES else None
            rule_id = self._judge(event)
            if rule_id is not None and event is not None:
                drops.append((rule_id, event))
            else:
                kept.append(item)
        try:
            if drops:
                await self._record_drops(drops)
            if kept:
                if drops or self.token is not None:
                    await self._forward(request, "envelope", self._outgoing(header, kept), original=False)
                else:
                    await self._forward(request, "envelope", raw, original=True)
        except _Refused as refused:
            return refused.response
        if kept:
            self.kept += sum(1 for i in kept if i.type in _EVENT_TYPES)
        event_id = _event_id(json.loads(header) if header.strip() else {})
        return web.json_response({"id": event_id} if event_id else {})

    async def store(self, request: web.Request) -> web.StreamResponse:
        return await self._admitted(request, self._store, "event")

    async def _store(self, request: web.Request, ticket: Ticket) -> web.Response:
        try:
            raw, body = await read_limited(request, self.max_body, keep_raw=True, ticket=ticket)
        except BadData as error:
            return web.Response(status=400, text=str(error))
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # not UTF-8, not JSON, too deep
            parsed = None
        if not isinstance(parsed, dict):
            return web.Response(status=400, text="event is not a JSON object")
        event = event_for_rules(parsed)
        rule_id = self._judge(event)
        try:
            if rule_id is not None and event is not None:
                await self._record_drops([(rule_id, event)])
            else:
                if self.token is None:
                    await self._forward(request, "store", raw, original=True)
                else:
                    await self._forward(request, "store", body.replace(*self._key_swap()), original=False)
                self.kept += 1
        except _Refused as refused:
            return refused.response
        event_id = _event_id(parsed)
        return web.json_response({"id": event_id})


def _event_id(document: Any) -> str | None:
    """The ``event_id`` to echo, when it is one (32 hex digits, dashes allowed)."""
    value = document.get("event_id") if isinstance(document, dict) else None
    return value if isinstance(value, str) and len(value) <= 40 else None


def _clean(text: str, limit: int) -> str:
    """Text a client sent, as the store can hold it (no lone surrogates) and bounded."""
    return text[:limit].encode("utf-8", "replace").decode("utf-8")


def _unavailable(error: StoreUnavailable) -> web.Response:
    return web.Response(
        status=503,
        headers={"Retry-After": str(error.retry_after)},
        text=f"the collector cannot store this now: {error.reason}; retry later",
    )


def _summary(event: SentryEvent) -> str:
    values = ((event.get("exception") or {}).get("values")) or []
    if values:
        last = values[-1]
        return f"{last.get('type', '')}: {last.get('value', '')}"[:500]
    logentry = event.get("logentry") or {}
    return str(logentry.get("formatted") or logentry.get("message") or event.get("message") or "")[:500]
