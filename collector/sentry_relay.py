"""A Sentry relay for SDKs we cannot hook into (JavaScript included): the same rules, over HTTP.

``POST /api/{project_id}/envelope/`` and the legacy ``/api/{project_id}/store/`` take what any
Sentry SDK sends. Each event item is judged by ``telemetry.sentry.classify``; dropped ones are
counted by rule and by run id. What remains goes to the upstream Sentry of ``--sentry-upstream``
with the client's own auth header and query string; kept items travel unchanged byte for byte
(the whole body too, still compressed, when nothing was dropped). Upstream down: the forwarder's
spool holds it and retries with backoff.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import Counter
from urllib.parse import urlsplit

from aiohttp import web

from telemetry.sentry import classify, workflow_ids
from telemetry.sentry_envelope import BadEnvelope, parse_envelope

from .forward import Forwarder
from .ingest import TooLarge, read_limited
from .writer import Batch, Writer

__all__ = ["SentryRelay", "upstream_base"]

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


class SentryRelay:
    def __init__(self, writer: Writer, forwarder: Forwarder | None, upstream_dsn: str | None, *, max_body: int) -> None:
        self.writer = writer
        self.forwarder = forwarder
        self.upstream = upstream_base(upstream_dsn) if upstream_dsn else None
        self.max_body = max_body
        self.dropped: Counter[str] = Counter()
        self.kept = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/{project_id}/envelope/", self.envelope),
            web.post("/api/{project_id}/store/", self.store),
        ]

    def _judge(self, payload: bytes) -> tuple[str | None, dict | None]:
        try:
            event = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, None  # not ours to judge: pass it on
        if not isinstance(event, dict):
            return None, None
        rule = classify(event)
        return (rule.id if rule else None), event

    async def _record_drops(self, drops: list[tuple[str, dict]]) -> None:
        rows = []
        for rule_id, event in drops:
            self.dropped[rule_id] += 1
            run_id = workflow_ids(event)[0]
            summary = _summary(event)
            rows.append((run_id, rule_id, summary))
            log.debug(
                "sentry relay dropped event %s by rule %s (run %s)", event.get("event_id"), rule_id, run_id or "?"
            )
        await self.writer.submit(Batch(sentry_drops=rows))

    async def _forward(self, request: web.Request, kind: str, body: bytes, *, original: bool) -> None:
        """Spool ``body`` for upstream; ``original``: the very bytes the client sent (keep their encoding)."""
        if self.forwarder is None or self.upstream is None:
            return
        base, project = self.upstream
        url = f"{base}/api/{project}/{kind}/" + (f"?{request.query_string}" if request.query_string else "")
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in ("x-sentry-auth", "content-type", "user-agent")
        }
        if original and request.headers.get("Content-Encoding"):
            headers["Content-Encoding"] = request.headers["Content-Encoding"]
        await self.forwarder.enqueue(body, url=url, headers=headers)

    async def envelope(self, request: web.Request) -> web.Response:
        try:
            raw, body = await read_limited(request, self.max_body, keep_raw=True)
            header, items = parse_envelope(body)
        except TooLarge:
            return web.Response(status=413, text=f"envelope over {self.max_body} bytes")
        except (BadEnvelope, zlib.error) as error:
            return web.Response(status=400, text=str(error))
        kept, drops = [], []
        for item in items:
            rule_id, event = self._judge(item.payload) if item.type in _EVENT_TYPES else (None, None)
            if rule_id:
                drops.append((rule_id, event))
            else:
                kept.append(item)
        if drops:
            await self._record_drops(drops)
        if kept:
            self.kept += sum(1 for i in kept if i.type in _EVENT_TYPES)
            if not drops:
                await self._forward(request, "envelope", raw, original=True)
            else:
                await self._forward(request, "envelope", header + b"".join(i.raw for i in kept), original=False)
        event_id = json.loads(header or b"{}").get("event_id")
        return web.json_response({"id": event_id} if event_id else {})

    async def store(self, request: web.Request) -> web.Response:
        try:
            raw, body = await read_limited(request, self.max_body, keep_raw=True)
        except TooLarge:
            return web.Response(status=413, text=f"event over {self.max_body} bytes")
        except zlib.error as error:
            return web.Response(status=400, text=str(error))
        rule_id, event = self._judge(body)
        if event is None:
            return web.Response(status=400, text="event is not a JSON object")
        if rule_id:
            await self._record_drops([(rule_id, event)])
        else:
            self.kept += 1
            await self._forward(request, "store", raw, original=True)
        return web.json_response({"id": event.get("event_id")})


def _summary(event: dict) -> str:
    values = ((event.get("exception") or {}).get("values")) or []
    if values:
        last = values[-1]
        return f"{last.get('type', '')}: {last.get('value', '')}"[:500]
    logentry = event.get("logentry") or {}
    return str(logentry.get("formatted") or logentry.get("message") or event.get("message") or "")[:500]
